"""The short version of the scale-out proof (tests/multihost/run.py --short): two API replicas
on two hosts behind HAProxy, two worker hosts, the stores on a third, the load on a fourth. Under
a steady load the leading replica is killed, a worker host loses its link, and Valkey restarts
empty; every accepted task completes exactly once and throughput comes back each time."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.chaos.system import netns_unavailable
from tests.multihost.run import prove, summary

pytestmark = [
    pytest.mark.multihost,
    pytest.mark.timeout(600),
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy"),
    pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable())),
]


async def test_replicas_and_worker_hosts_survive_faults_under_load(tmp_path: Path) -> None:
    report = (await prove(tmp_path, short=True, rate=100)).as_dict()
    print(summary(report))
    assert report["accepted"] > 0
    assert report["problems"] == []
    assert {f["name"] for f in report["faults"]} == {
        "kill_leader",
        "worker_host_down",
        "redis_data_loss",
    }
