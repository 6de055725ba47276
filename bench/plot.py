#!/usr/bin/env python3
"""PNG charts from benchmark JSON files (bench/side_by_side.py's and bench/bench.py's).

    python bench/plot.py bench/results/side_by_side.json [more.json ...] [--out DIR]

Each chart is written only when the files hold the data it needs; points from all the files
are merged (the same system at the same x in two files: the later file wins).

  throughput_vs_workers.png  drain rate against worker processes, one line per system
                             (side_by_side.py --sweep-workers, or bench.py runs with different
                             --workers); needs two worker counts for some system.
  throughput_vs_slots.png    ours: drain rate against slots per worker (bench.py runs with
                             different --worker-slots, e.g. 2cpu-k5.json and 2cpu-k50.json).
  latency_vs_rate.png        submit->start p50 (solid) and p99 (dashed) against the offered rate
                             (side_by_side.py --sweep-rates, or bench.py runs with different
                             --rate); hollow markers: the system fell short of the offered rate.
  <name>_summary.png         for each side_by_side.py file: its main figures, one bar per system.

Needs matplotlib (bench/requirements-bench.txt).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

# CI's lint does not install the bench requirements: then matplotlib is unknown to mypy.
import matplotlib  # type: ignore[import-not-found, unused-ignore]

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
from matplotlib.axes import Axes  # type: ignore[import-not-found, unused-ignore]

Json = dict[str, Any]
T = TypeVar("T")
KNOWN_COLOURS = {"celery": "tab:green", "dramatiq": "tab:purple"}
OURS_COLOURS = {"ours-sqlite": "tab:blue", "ours-postgres": "tab:orange"}
SHORT_OF_RATE = 0.95  # achieved below this share of the offered rate: "fell short"
STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))  # one per slots / workers value


@dataclass(frozen=True)
class Throughput:
    system: str
    workers: int
    slots: int | None  # ours only
    tasks_per_s: float


@dataclass(frozen=True)
class Latency:
    system: str
    offered: float
    achieved: float
    p50_ms: float
    p99_ms: float


# --------------------------------------------------------------------------------------------- #
# Reading the files
# --------------------------------------------------------------------------------------------- #


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value == value
    return float(value) if ok else None


def _slots(system: str, options: Json) -> int | None:
    """Slots per worker: ours only (the peers' concurrency is their default)."""
    if not system.startswith("ours-"):
        return None
    return int(options.get("worker_slots", 0)) or None


def _latency(system: str, result: Json, offered: float | None = None) -> Latency | None:
    start = result.get("submit_to_start_ms", {})
    values = [
        _number(offered if offered is not None else result.get("target_rate")),
        _number(result.get("achieved_rate")),
        _number(start.get("p50")),
        _number(start.get("p99")),
    ]
    if any(v is None for v in values):
        return None
    rate, achieved, p50, p99 = (float(v or 0.0) for v in values)
    return Latency(system, rate, achieved, p50, p99)


def _drain(system: str, result: Json, workers: int, options: Json) -> Throughput | None:
    rate = _number(result.get("drain_tasks_per_s"))
    if rate is None:
        return None
    return Throughput(system, workers, _slots(system, options), rate)


def from_side_by_side(doc: Json) -> tuple[list[Throughput], list[Latency]]:
    options = doc.get("options", {})
    throughput, latency = [], []
    for system, result in doc.get("results", {}).items():
        throughput.append(_drain(system, result.get("drain", {}), options["workers"], options))
        latency.append(_latency(system, result.get("latency", {})))
    sweeps = doc.get("sweeps", {})
    for system, points in sweeps.get("workers", {}).items():
        for p in points:
            throughput.append(_drain(system, p, int(p["workers"]), options))
    for system, points in sweeps.get("rates", {}).items():
        for p in points:
            result = {"achieved_rate": p.get("achieved_rate"), "submit_to_start_ms": {}}
            result["submit_to_start_ms"] = {"p50": p.get("p50_ms"), "p99": p.get("p99_ms")}
            latency.append(_latency(system, result, _number(p.get("rate"))))
    return _present(throughput), _present(latency)


def from_bench(doc: Json) -> tuple[list[Throughput], list[Latency]]:
    """A bench.py file: one point per backend (its --workers, --worker-slots and --rate)."""
    options = doc.get("options", {})
    throughput, latency = [], []
    for backend, phases in doc.get("results", {}).items():
        system = f"ours-{backend}"
        drain = phases.get("drain", {})
        throughput.append(_drain(system, drain, int(options.get("workers", 0)), options))
        latency.append(_latency(system, phases.get("latency", {})))
    return _present(throughput), _present(latency)


def _present(items: Iterable[T | None]) -> list[T]:
    return [item for item in items if item is not None]


# --------------------------------------------------------------------------------------------- #
# Charts
# --------------------------------------------------------------------------------------------- #


def colour(system: str) -> str:
    return KNOWN_COLOURS.get(system) or OURS_COLOURS.get(system) or "tab:gray"


def _finish(fig: Any, ax: Axes, path: Path, title: str) -> None:
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def _has_sweep(series: dict[Any, dict[float, Any]]) -> bool:
    return any(len(points) >= 2 for points in series.values())


def _style(value: int | None, values: Iterable[int | None]) -> tuple[str, str]:
    """Line style and marker telling apart the series of one system (same colour)."""
    ordered = sorted({v or 0 for v in values})
    return STYLES[ordered.index(value or 0) % len(STYLES)]


def _integer_ticks(ax: Axes, values: Iterable[int]) -> None:
    ticks = sorted(set(values))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()


def plot_workers(points: list[Throughput], out: Path) -> None:
    series: dict[tuple[str, int | None], dict[float, float]] = defaultdict(dict)
    for p in points:
        series[(p.system, p.slots)][p.workers] = p.tasks_per_s
    if not _has_sweep(series):
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (system, slots), values in sorted(series.items(), key=lambda s: (s[0][0], s[0][1] or 0)):
        xs = sorted(values)
        label = f"{system}, {slots} slots/worker" if slots else system
        line, marker = _style(slots, (p.slots for p in points))
        ax.plot(xs, [values[x] for x in xs], line, marker=marker, color=colour(system), label=label)
    ax.set_xlabel("worker processes")
    ax.set_ylabel("drain throughput (tasks/s)")
    _integer_ticks(ax, (p.workers for p in points))
    ax.set_ylim(bottom=0)
    _finish(fig, ax, out / "throughput_vs_workers.png", "Drain of pre-loaded no-op tasks")


def plot_slots(points: list[Throughput], out: Path) -> None:
    series: dict[tuple[str, int], dict[float, float]] = defaultdict(dict)
    for p in points:
        if p.slots is not None:
            series[(p.system, p.workers)][p.slots] = p.tasks_per_s
    if not _has_sweep(series):
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (system, workers), values in sorted(series.items()):
        xs = sorted(values)
        label = f"{system}, {workers} worker process{'es' if workers != 1 else ''}"
        line, marker = _style(workers, (w for _, w in series))
        ax.plot(xs, [values[x] for x in xs], line, marker=marker, color=colour(system), label=label)
    ax.set_xlabel("slots per worker (--max-concurrent-tasks, log scale)")
    ax.set_ylabel("drain throughput (tasks/s)")
    ax.set_xscale("log")
    _integer_ticks(ax, (p.slots for p in points if p.slots is not None))
    ax.set_ylim(bottom=0)
    _finish(fig, ax, out / "throughput_vs_slots.png", "Ours: drain against worker slots")


def plot_latency(points: list[Latency], out: Path) -> None:
    series: dict[str, dict[float, Latency]] = defaultdict(dict)
    for p in points:
        series[p.system][p.offered] = p
    if not _has_sweep(series):
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system, values in sorted(series.items()):
        xs = sorted(values)
        for field, style, marker in (("p50_ms", "-", "o"), ("p99_ms", "--", "^")):
            ys = [getattr(values[x], field) for x in xs]
            ax.plot(xs, ys, style, color=colour(system), label=f"{system} {field[:3]}")
            for x, y in zip(xs, ys, strict=True):
                short = values[x].achieved < SHORT_OF_RATE * x
                face = "white" if short else colour(system)
                ax.plot([x], [y], marker, color=colour(system), markerfacecolor=face)
    ax.set_xlabel("offered rate (tasks/s)")
    ax.set_ylabel("submit -> start latency (ms, log scale)")
    ax.set_yscale("log")
    title = "Latency with idle workers (hollow: fell short of the offered rate)"
    _finish(fig, ax, out / "latency_vs_rate.png", title)


def summary_rates(options: Json) -> list[tuple[str, tuple[str, ...]]]:
    live = f"enqueue, {options.get('enqueue_threads', 'N')} producers,\nworkers on"
    return [
        ("drain", ("drain", "drain_tasks_per_s")),
        ("enqueue, 1 producer,\nno workers", ("enqueue", "tasks_per_s")),
        (live, ("enqueue_live", "tasks_per_s")),
    ]


def _get(result: Json, path: Sequence[str]) -> float | None:
    value: Any = result
    for key in path:
        value = value.get(key, {}) if isinstance(value, dict) else None
    return _number(value)


def _bars(ax: Axes, groups: list[str], systems: list[str], values: list[list[float]]) -> None:
    """Grouped bars: one group per measure, one bar per system (0 where missing)."""
    width = 0.8 / max(1, len(systems))
    for i, system in enumerate(systems):
        xs = [g + (i - (len(systems) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, values[i], width, color=colour(system), label=system)
    ax.set_xticks(range(len(groups)), groups, fontsize="small")


def plot_summary(doc: Json, name: str, out: Path) -> None:
    results: Json = doc.get("results", {})
    systems = list(results)
    if not systems:
        return
    options = doc.get("options", {})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.2))
    measures = summary_rates(options)
    rates = [[_get(results[s], p) or 0.0 for _, p in measures] for s in systems]
    _bars(left, [label for label, _ in measures], systems, rates)
    left.set_ylabel("tasks/s (higher is better)")
    left.set_title("Throughput")
    quantiles = ("p50", "p95", "p99")
    paths = [("latency", "submit_to_start_ms", q) for q in quantiles]
    latencies = [[_get(results[s], p) or 0.0 for p in paths] for s in systems]
    _bars(right, list(quantiles), systems, latencies)
    right.set_yscale("log")
    right.set_ylabel("submit -> start (ms, log scale, lower is better)")
    right.set_title(f"Latency at {options.get('rate', 0):g} tasks/s offered")
    for ax in (left, right):
        ax.grid(True, axis="y", alpha=0.3)
    handles, labels = left.get_legend_handles_labels()  # one legend, under the charts
    fig.legend(handles, labels, loc="lower center", ncol=len(systems), fontsize="small")
    fig.suptitle(textwrap.fill(doc.get("setup", ""), 140), fontsize="small")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = out / f"{name}_summary.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


# --------------------------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------------------------- #


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="PNG charts from benchmark JSON files.")
    p.add_argument("files", nargs="+", type=Path, help="side_by_side.py or bench.py JSON")
    p.add_argument("--out", type=Path, default=Path("bench/results/plots"), help="directory")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    throughput: list[Throughput] = []
    latency: list[Latency] = []
    for path in args.files:
        doc = json.loads(path.read_text())
        side = doc.get("kind") == "side_by_side"
        found = from_side_by_side(doc) if side else from_bench(doc)
        throughput += found[0]
        latency += found[1]
        if side:
            plot_summary(doc, path.stem, args.out)
    plot_workers(throughput, args.out)
    plot_slots(throughput, args.out)
    plot_latency(latency, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
