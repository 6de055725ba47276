"""The scale-out proof on separate network hosts, runnable on demand (root, haproxy):

    python -m tests.multihost.run --report bench/results/multihost.json --chart docs/images/scaling

Builds the hosts (tests/multihost/world.py): PostgreSQL and Valkey on the data host, three API
replicas on three hosts, HAProxy on one, six workers on three hosts, the load on its own. Under a
steady load it kills the leading replica, cuts a worker host off the network, partitions a
replica from Valkey and restarts Valkey with its data lost; then checks that every accepted task
completed exactly once and that throughput came back within 20 % within 30 s of each fault. The
exit status is 1 when anything was lost, duplicated or did not recover. `--short` is the version
CI runs (tests/multihost/test_multihost.py)."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.multihost.cluster import Cluster, Shape
from tests.multihost.scenario import Report, Scenario

FAULTS = ["kill_leader", "worker_host_down", "api_cut_from_redis", "redis_data_loss"]


async def prove(tmp: Path, *, short: bool, rate: float) -> Report:
    shape = Shape(apis=2, worker_hosts=2, workers_per_host=1) if short else Shape()
    cluster = Cluster(tmp, shape)
    # SIGTERM (a timeout, an impatient operator) still tears the hosts and processes down.
    current = asyncio.current_task()
    assert current is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, current.cancel)
    try:
        await cluster.start()
        scenario = Scenario(cluster, rate=rate, task_seconds=0.05 if short else 0.1)
        if short:
            faults = ["kill_leader", "worker_host_down", "redis_data_loss"]
            return await scenario.run(faults, warmup=3, observe=12, cut=8)
        return await scenario.run(FAULTS, warmup=10, observe=30, cut=30)
    except BaseException:
        print(cluster.logs(), file=sys.stderr)
        raise
    finally:
        await cluster.close()


def chart(report: dict[str, object], folder: Path) -> Path | None:
    """Throughput over the run with the faults marked (needs matplotlib: bench requirements)."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        print("no matplotlib: chart skipped (pip install -r bench/requirements-bench.txt)")
        return None
    samples = report["samples"]
    assert isinstance(samples, list)
    t0 = samples[0][0]
    times = [t - t0 for t, _ in samples[1:]]
    rates = [b[1] - a[1] for a, b in itertools.pairwise(samples)]
    figure, axes = plt.subplots(figsize=(10, 4))
    axes.plot(times, rates, color="#1f77b4", linewidth=1.2, label="completed per second")
    faults = report["faults"]
    assert isinstance(faults, list)
    for fault in faults:
        axes.axvspan(fault["started"] - t0, max(fault["ended"], fault["started"] + 1) - t0,
                     color="#d62728", alpha=0.2)  # fmt: skip
        axes.annotate(fault["name"], (fault["started"] - t0, max(rates) * 1.02), fontsize=8)
    axes.set_xlabel("seconds since the load started")
    axes.set_ylabel("tasks completed per second")
    axes.set_ylim(0, max(rates) * 1.15)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "throughput_under_faults.png"
    figure.savefig(path, dpi=110)
    return path


def summary(report: dict[str, object]) -> str:
    lines = [f"accepted {report['accepted']}, lost {report['lost']}, duplicates "
             f"{report['duplicates']}, {report['seconds']:.0f} s"]  # fmt: skip
    faults = report["faults"]
    assert isinstance(faults, list)
    for f in faults:
        recovered = f["recovered_after"]
        lines.append(
            f"  {f['name']:<20} before {f['baseline']:6.1f}/s  during {f['during']:6.1f}/s  "
            f"after {f['after']:6.1f}/s  back after "
            f"{'never' if recovered is None else f'{recovered:.0f} s'}  {f['detail']}"
        )
    problems = report["problems"]
    assert isinstance(problems, list)
    lines += [f"PROBLEM: {p}" for p in problems] or ["OK"]
    return "\n".join(lines)


DOC_START, DOC_END = "<!-- multihost:start -->", "<!-- multihost:end -->"
TITLES = {
    "kill_leader": "Leading API replica killed (SIGKILL), restarted once another leads",
    "worker_host_down": "Worker host's link down",
    "api_cut_from_redis": "One API replica cut off from Valkey (not from PostgreSQL)",
    "redis_data_loss": "Valkey killed and restarted empty",
}


def results_markdown(report: dict[str, Any], command: str) -> str:
    """The results section of docs/scaling.md."""
    rows = [
        "| Fault | Before (tasks/s) | During | After | Back within 20 % after | Detail |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for f in report["faults"]:
        back = "never" if f["recovered_after"] is None else f"{f['recovered_after']:.0f} s"
        rows.append(
            f"| {TITLES.get(f['name'], f['name'])} | {f['baseline']:.0f} | {f['during']:.0f} | "
            f"{f['after']:.0f} | {back} | {_detail(f)} |"
        )
    completed = report["accepted"]
    cpu = report["cpu_seconds"]
    shares = ", ".join(
        f"{role} {seconds / completed * 1000:.2f} ms" for role, seconds in cpu.items()
    )
    shape = report["shape"]
    return "\n".join([
        f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(report['samples'][0][0]))}: "
        f"{shape['apis']} API replicas, {shape['worker_hosts']} worker hosts x "
        f"{shape['workers_per_host']} workers, {report['rate']:.0f} tasks/s offered "
        f"(`sleep` {report['task_seconds']} s each), {report['seconds']:.0f} s. "
        f"**{report['accepted']:,} tasks accepted, {report['lost']} lost, "
        f"{report['duplicates']} duplicate results.**",
        "",
        *rows,
        "",
        f"CPU per task, by role, over the run: {shares} (processes alive at the end: the killed "
        "replica's time and Valkey's before its restart are not counted).",
        "",
        f"Command: `{command}`.",
    ])  # fmt: skip


def _detail(fault: dict[str, Any]) -> str:
    d = fault["detail"]
    if fault["name"] == "kill_leader":
        return f"lead moved {d['killed']} → {d['successor']} in {d['leader_moved_s']:.1f} s"
    if fault["name"] == "worker_host_down" and d.get("reassigned"):
        return (
            f"{d['link_down_s']:.0f} s down; its {d['reassigned']} running tasks started "
            f"elsewhere after {d['reassign_p50_s']:.1f} s (p50), {d['reassign_max_s']:.1f} s (max)"
        )
    if fault["name"] == "api_cut_from_redis":
        return f"{d['api']} cut for {d['cut_s']:.0f} s, still routed to (ready, degraded)"
    return ""


def write_doc(path: Path, section: str) -> None:
    text = path.read_text()
    start, end = text.index(DOC_START) + len(DOC_START), text.index(DOC_END)
    path.write_text(text[:start] + "\n" + section + "\n" + text[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="2 replicas, 2 workers, 3 faults")
    parser.add_argument("--rate", type=float, default=0, help="tasks/s offered (200; short 100)")
    parser.add_argument("--report", type=Path, help="write the figures as JSON here")
    parser.add_argument("--chart", type=Path, help="write throughput_under_faults.png here")
    parser.add_argument("--doc", type=Path, help="rewrite the results section of this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    options = parser.parse_args()
    if shutil.which("haproxy") is None:
        parser.error("needs haproxy (apt-get install haproxy)")
    tmp = Path(tempfile.mkdtemp(prefix="dts-multihost-"))
    rate = options.rate or (100 if options.short else 200)
    report = asyncio.run(prove(tmp, short=options.short, rate=rate)).as_dict()
    print(summary(report))
    if options.report:
        options.report.write_text(json.dumps(report, indent=1) + "\n")
    if options.chart:
        chart(report, options.chart)
    if options.doc:
        command = "python -m tests.multihost.run " + " ".join(sys.argv[1:])
        write_doc(options.doc, results_markdown(report, command))
    if not options.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
