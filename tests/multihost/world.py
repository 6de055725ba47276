"""Separate network hosts on one machine: each host a network namespace with its own address on
one bridge, so processes on different hosts talk over real TCP through a real link that can be
cut. The data host (PostgreSQL and Valkey) is this namespace: the bridge carries its two
addresses, one per store, so a host can be cut off from Valkey but not from PostgreSQL.

    with Hosts(["api1", "lb", "w1", "client"]) as hosts:
        hosts["w1"].exec_prefix      # ["ip", "netns", "exec", ...]
        hosts.link_down("w1"); hosts.link_up("w1")
        hosts.cut("api1", hosts.redis_ip); hosts.heal("api1")

Names are `dtsmh-<pid>-…`; a run that was killed leaves namespaces that the next run removes."""

from __future__ import annotations

import atexit
import ipaddress
import os
import random
import re
from dataclasses import dataclass

from tests.chaos.system import (
    NOWHERE,
    NS_LINK,
    SystemFaultError,
    _quiet,
    add_namespace,
    allocation_lock,
    free_subnets,
    netns_unavailable,
    remove_stale,
    run,
)

PREFIX = "dtsmh"
SUBNETS = ipaddress.IPv4Network("10.232.0.0/16")


@dataclass
class Host:
    name: str
    netns: str
    ip: str
    link: str  # the bridge's end of the host's veth pair

    @property
    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]


class Hosts:
    """A bridge in this namespace and one namespace per host name, all on one /24."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.tag = f"{PREFIX}-{os.getpid()}-{random.randrange(16**4):04x}"
        self.bridge = f"dtsbr{os.getpid() % 10**6}{random.randrange(16**2):02x}"[:15]
        self.hosts: dict[str, Host] = {}
        self.postgres_ip = self.redis_ip = ""
        self.subnet: ipaddress.IPv4Network | None = None

    def __enter__(self) -> Hosts:
        self.create()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def create(self) -> None:
        reason = netns_unavailable()
        if reason:
            raise SystemFaultError(reason)
        atexit.register(self.close)
        remove_stale(PREFIX)
        remove_stale_bridges()
        with allocation_lock():
            free = free_subnets(SUBNETS)
            if not free:
                raise SystemFaultError(f"no free /24 left in {SUBNETS}")
            self.subnet = free[0]
            try:
                self._create_bridge()
                for n, name in enumerate(self.names):
                    self._create_host(n, name)
            except BaseException:
                self.close()
                raise

    def _create_bridge(self) -> None:
        assert self.subnet is not None
        addresses = list(self.subnet.hosts())
        self.postgres_ip, self.redis_ip = str(addresses[1]), str(addresses[2])
        run("ip", "link", "add", self.bridge, "type", "bridge")
        for address in (addresses[0], addresses[1], addresses[2]):
            run("ip", "addr", "add", f"{address}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")

    def _create_host(self, n: int, name: str) -> None:
        assert self.subnet is not None
        ip = str(list(self.subnet.hosts())[10 + n])
        link = f"dtsh{os.getpid() % 10**5}{random.randrange(16**2):02x}{n}"[:15]
        host = Host(name, f"{self.tag}-{name}", ip, link)
        self.hosts[name] = host  # close() removes it even if the set-up fails half-way
        add_namespace(host.netns, link, f"{ip}/24")
        run("ip", "link", "set", link, "master", self.bridge)
        run("ip", "link", "set", link, "up")

    def link_down(self, name: str) -> None:
        """Pull the host's cable: nothing in or out until link_up."""
        run("ip", "link", "set", self.hosts[name].link, "down")

    def link_up(self, name: str) -> None:
        run("ip", "link", "set", self.hosts[name].link, "up")

    def cut(self, name: str, address: str) -> None:
        """Drop what the host sends to `address` (its frames go to a link-layer address nobody
        has), leaving every other destination reachable."""
        run(*self.hosts[name].exec_prefix, "ip", "neigh", "replace", address,
            "lladdr", NOWHERE, "dev", NS_LINK, "nud", "permanent")  # fmt: skip

    def heal(self, name: str, address: str) -> None:
        _quiet(*self.hosts[name].exec_prefix, "ip", "neigh", "del", address, "dev", NS_LINK)

    def close(self) -> None:
        """Processes still inside keep a namespace alive: stop them first."""
        for host in self.hosts.values():
            _quiet("ip", "netns", "del", host.netns)
            _quiet("ip", "link", "del", host.link)
        self.hosts.clear()
        _quiet("ip", "link", "del", self.bridge)
        atexit.unregister(self.close)


def remove_stale_bridges() -> None:
    """Bridges left by a run that was killed (nothing is attached to them any more)."""
    try:
        links = run("ip", "-o", "link", "show", "type", "bridge")
    except SystemFaultError:
        return
    for bridge in re.findall(r"^\d+: (dtsbr\d+[0-9a-f]{2})[:@]", links, flags=re.MULTILINE):
        if not _bridge_has_ports(bridge):
            _quiet("ip", "link", "del", bridge)


def _bridge_has_ports(bridge: str) -> bool:
    return bool(run("ip", "-o", "link", "show", "master", bridge).strip())
