"""Machine-level faults for the chaos suite, which need root: network namespaces joined to this
one by veth links (partitions), a small tmpfs (a full disk), and libfaketime (a skewed clock).

Each `*_unavailable()` returns why the fault cannot be injected here, or None; the tests skip
with that reason. Everything created is named after this process (`dtschaos-<pid>-…`) and
removed on close, at exit, and by the next run if this one was killed.

Partitions drop packets silently, as a real network does (a connection attempt times out, a
request in flight hangs), rather than refusing them: the namespace's neighbour entry for an
address is replaced by a link-layer address no interface has, so the frames leave but nobody
takes them. Cutting one destination address leaves the others reachable, which is how a worker
is cut off from the API but not from Valkey (they are reached through different addresses)."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import os
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

PREFIX = "dtschaos"
SUBNETS = ipaddress.IPv4Network("10.231.0.0/16")  # each namespace takes a free /24 of it
NOWHERE = "02:00:00:5e:00:01"  # a locally administered MAC that no interface here has
NS_LINK = "eth0"  # the namespace's end of its veth pair
LOCK_FILE = Path("/tmp/dtschaos-netns.lock")  # concurrent runs pick distinct subnets
FAKETIME_LIBRARIES = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
)


class SystemFaultError(RuntimeError):
    """A command that sets up or injects a machine-level fault failed."""


def run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise SystemFaultError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _quiet(*args: str) -> None:
    """A clean-up step: what is already gone is fine."""
    subprocess.run(args, capture_output=True, timeout=30, check=False)


# --------------------------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------------------------


@cache
def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here (None: they can)."""
    if os.geteuid() != 0:
        return "network partitions need root (ip netns, veth links)"
    if shutil.which("ip") is None:
        return "network partitions need iproute2 (the `ip` command)"
    probe, link = f"{PREFIX}-{os.getpid()}-probe", f"dtcprobe{os.getpid() % 10**6}"
    try:
        run("ip", "netns", "add", probe)
        run("ip", "link", "add", link, "type", "veth", "peer", "name", NS_LINK, "netns", probe)
    except SystemFaultError as exc:
        return f"cannot create a network namespace with a veth link: {exc}"
    finally:
        _quiet("ip", "netns", "del", probe)
        _quiet("ip", "link", "del", link)
    return None


@cache
def tmpfs_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "a full disk needs root (mount -t tmpfs)"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "a full disk needs mount and umount"
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}-") as folder:
        try:
            run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", folder)
        except SystemFaultError as exc:
            return f"cannot mount a tmpfs: {exc}"
        _quiet("umount", folder)
    return None


def faketime_library() -> str | None:
    return next((p for p in FAKETIME_LIBRARIES if Path(p).exists()), None)


def faketime_unavailable() -> str | None:
    if faketime_library() is None:
        return "clock skew needs libfaketime (Debian: apt-get install faketime)"
    return None


def skewed_clock_env(seconds: int) -> dict[str, str]:
    """Environment that runs a process (and its children) with its wall clock `seconds` off.
    Only the wall clock: monotonic clocks are not affected by a wrong date either."""
    library = faketime_library()
    if library is None:
        raise SystemFaultError(faketime_unavailable() or "no libfaketime")
    return {
        "LD_PRELOAD": library,
        "FAKETIME": f"{seconds:+d}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_DONT_RESET": "1",
    }


# --------------------------------------------------------------------------------------------
# Network namespaces
# --------------------------------------------------------------------------------------------


@dataclass
class Namespace:
    """A network namespace linked to this one by a veth pair. This side has two addresses:
    `api_ip` (the worker's way to the API) and `redis_ip` (its way to Valkey)."""

    name: str
    link: str  # this side of the veth pair
    own_ip: str  # the namespace's side
    api_ip: str
    redis_ip: str
    cut_off: set[str] = field(default_factory=set)  # what is cut now: "api", "redis", "back"

    @property
    def exec_prefix(self) -> list[str]:
        """Run a command inside the namespace (`ip netns exec` execs it: the pid is the
        command's, so signals to the process group reach it)."""
        return ["ip", "netns", "exec", self.name]

    def cut(self, *, api: bool, redis: bool) -> None:
        """Drop what the namespace sends to the API's or Valkey's address (or both); with both,
        also what this side sends back, which makes the partition complete."""
        wanted = {part for part, chosen in (("api", api), ("redis", redis)) if chosen}
        if api and redis:
            wanted.add("back")
        for part in sorted(wanted - self.cut_off):
            self._neighbour(part, NOWHERE)
            self.cut_off.add(part)

    def heal(self) -> None:
        """Remove every cut: the neighbour entries are looked up again (ARP) on the next frame."""
        for part in sorted(self.cut_off):
            self._neighbour(part, None)
        self.cut_off.clear()

    def _neighbour(self, part: str, lladdr: str | None) -> None:
        if part == "back":
            where, address, device = [], self.own_ip, self.link
        else:
            where, device = self.exec_prefix, NS_LINK
            address = self.api_ip if part == "api" else self.redis_ip
        if lladdr is None:
            _quiet(*where, "ip", "neigh", "del", address, "dev", device)
        else:
            run(*where, "ip", "neigh", "replace", address, "lladdr", lladdr, "dev", device,
                "nud", "permanent")  # fmt: skip


class Network:
    """`count` namespaces, each with its own /24 of 10.231.0.0/16. Use as a context manager, or
    call create() and close() (close is also registered to run at exit)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.tag = f"{PREFIX}-{os.getpid()}-{random.randrange(16**4):04x}"
        self.namespaces: list[Namespace] = []

    def __enter__(self) -> Network:
        self.create()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def root_addresses(self) -> list[str]:
        """This side's addresses (for servers that must be reachable from the namespaces)."""
        return [ip for ns in self.namespaces for ip in (ns.api_ip, ns.redis_ip)]

    def create(self) -> None:
        atexit.register(self.close)
        remove_stale()
        with allocation_lock():
            free = free_subnets()
            try:
                for n, subnet in zip(range(self.count), free, strict=False):
                    self._create_one(n, subnet)
            except BaseException:
                self.close()
                raise
        if len(self.namespaces) < self.count:
            self.close()
            raise SystemFaultError("no free /24 left in 10.231.0.0/16")

    def _create_one(self, n: int, subnet: ipaddress.IPv4Network) -> None:
        hosts = list(subnet.hosts())
        # Interface names are at most 15 characters: the pid and a per-run counter.
        link = f"dtc{os.getpid() % 10**6}{random.randrange(36**2):02x}{n}"[:15]
        ns = Namespace(
            f"{self.tag}-{n}", link, str(hosts[1]), api_ip=str(hosts[0]), redis_ip=str(hosts[2])
        )
        self.namespaces.append(ns)  # close() removes it even if the set-up fails half-way
        add_namespace(ns.name, link, f"{ns.own_ip}/{subnet.prefixlen}")
        for address in (ns.api_ip, ns.redis_ip):
            run("ip", "addr", "add", f"{address}/{subnet.prefixlen}", "dev", link)
        run("ip", "link", "set", link, "up")

    def close(self) -> None:
        """Delete the namespaces (their veth pairs go with them). Processes still inside keep a
        namespace alive: stop them first."""
        for ns in self.namespaces:
            _quiet("ip", "netns", "del", ns.name)
            _quiet("ip", "link", "del", ns.link)
        self.namespaces.clear()
        atexit.unregister(self.close)


def add_namespace(name: str, link: str, interface: str) -> None:
    """Namespace `name` joined to this one by a veth pair: NS_LINK inside, up with `interface`
    (address/prefix), and loopback up; `link` on this side, for the caller to address or bridge
    and bring up."""
    run("ip", "netns", "add", name)
    run("ip", "link", "add", link, "type", "veth", "peer", "name", NS_LINK, "netns", name)
    inside = ["ip", "netns", "exec", name]
    run(*inside, "ip", "addr", "add", interface, "dev", NS_LINK)
    run(*inside, "ip", "link", "set", NS_LINK, "up")
    run(*inside, "ip", "link", "set", "lo", "up")


def remove_stale(prefix: str = PREFIX) -> None:
    """Namespaces named `<prefix>-<pid>-…` left by a run that was killed (its pid is gone)."""
    try:
        names = run("ip", "netns", "list")
    except SystemFaultError:
        return
    for full, pid in re.findall(rf"^({prefix}-(\d+)-\S+)", names, flags=re.MULTILINE):
        if not Path(f"/proc/{pid}").exists():
            _quiet("ip", "netns", "del", full)


@contextlib.contextmanager
def allocation_lock() -> Iterator[None]:
    with LOCK_FILE.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def free_subnets(within: ipaddress.IPv4Network = SUBNETS) -> list[ipaddress.IPv4Network]:
    used = {
        ipaddress.IPv4Interface(found).network
        for found in re.findall(r"inet (\S+)", run("ip", "-o", "-4", "addr", "show"))
    }
    subnets = [
        s
        for s in within.subnets(new_prefix=24)
        if s.network_address.packed[2] not in (0, 255) and not any(s.overlaps(u) for u in used)
    ]
    random.shuffle(subnets)
    return subnets


# --------------------------------------------------------------------------------------------
# A small disk
# --------------------------------------------------------------------------------------------


@dataclass
class SmallDisk:
    """A tmpfs of `size_mb` mounted at `path`; fill() takes all its free space, free() gives it
    back."""

    path: Path
    size_mb: int = 16
    mounted: bool = False

    @property
    def filler(self) -> Path:
        return self.path / "filler"

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        run(
            "mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0755", "tmpfs", str(self.path)
        )
        self.mounted = True
        atexit.register(self.unmount)

    def fill(self) -> int:
        """Write until the file system is full; returns the bytes written. Unbuffered: a
        buffered file would raise ENOSPC again when it is closed."""
        written = 0
        with self.filler.open("ab", buffering=0) as handle:
            for size in (1024 * 1024, 4096, 1):  # the last partial page too
                chunk = b"\0" * size
                with contextlib.suppress(OSError):
                    while count := handle.write(chunk):
                        written += count
        return written

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.mounted:
            _quiet("umount", "-l", str(self.path))
            self.mounted = False
        atexit.unregister(self.unmount)
