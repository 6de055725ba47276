#!/usr/bin/env python3
"""Render a side-by-side run (bench/side_by_side.py --json) as a Markdown table, and put it into
documents between the markers `<!-- side-by-side:start -->` and `<!-- side-by-side:end -->`, so
the tables in README.md and docs/performance.md are regenerated from the results, never typed.

    python bench/report.py bench/results/side_by_side.json
    python bench/report.py bench/results/side_by_side.json --update README.md docs/performance.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

START, END = "<!-- side-by-side:start -->", "<!-- side-by-side:end -->"
SYSTEMS = {"celery": "Celery", "dramatiq": "Dramatiq", "ours-sqlite": "ours, SQLite"}
SYSTEMS["ours-postgres"] = "ours, PostgreSQL"
# (label, path in each system's results, better: "higher", "lower" or None for context)
ROWS: list[tuple[str, tuple[str, ...], str | None]] = [
    ("Drain of 10k pre-loaded no-op tasks (tasks/s)", ("drain", "drain_tasks_per_s"), "higher"),
    ("Enqueue, 1 producer, no workers (tasks/s)", ("enqueue", "tasks_per_s"), "higher"),
    ("Enqueue, 16 producers, workers running (tasks/s)", ("enqueue_live", "tasks_per_s"), "higher"),
    ("200/s open loop: rate achieved (tasks/s)", ("latency", "achieved_rate"), None),
    ("200/s open loop: submit→start p50 (ms)", ("latency", "submit_to_start_ms", "p50"), "lower"),
    ("200/s open loop: submit→start p99 (ms)", ("latency", "submit_to_start_ms", "p99"), "lower"),
    ("Others' CPU during the drain (% of machine)", ("drain", "cpu", "others_pct"), None),
    ("Others' CPU during the open loop (% of machine)", ("latency", "cpu", "others_pct"), None),
]
Json = dict[str, Any]


def value(results: Json, system: str, path: tuple[str, ...]) -> float | None:
    found: Any = results.get(system, {})
    for key in path:
        found = found.get(key) if isinstance(found, dict) else None
    return float(found) if isinstance(found, int | float) else None


def cell(number: float | None) -> str:
    if number is None:
        return "-"
    return f"{number:,.0f}" if abs(number) >= 100 else f"{number:,.1f}"


def ratio(results: Json, path: tuple[str, ...], better: str | None, ours: str) -> str:
    peers = [value(results, s, path) for s in ("celery", "dramatiq")]
    known = [p for p in peers if p]
    mine = value(results, ours, path)
    if better is None or not known or mine is None:
        return ""
    best = max(known) if better == "higher" else min(known)
    return f"{mine / best:.2f}×"


def table(document: Json) -> str:
    results = document["results"]
    systems = [s for s in SYSTEMS if s in results]
    ours = [s for s in systems if s.startswith("ours-")]
    header = ["", *(SYSTEMS[s] for s in systems), *(f"{SYSTEMS[s]} / best peer" for s in ours)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for label, path, better in ROWS:
        cells = [cell(value(results, s, path)) for s in systems]
        cells += [ratio(results, path, better, s) for s in ours]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    when, revision = document.get("started", "?"), document.get("revision", "?")
    lines += [
        "",
        "Ratios are ours / best peer: above 1 is better for rates, below 1 for latencies.",
    ]
    lines += [f"Run of {when} at {revision}: {document.get('setup', '')}."]
    lines.append(f"Command: `{document.get('command', '')}`.")
    return "\n".join(lines)


def update(path: Path, rendered: str) -> None:
    text = path.read_text()
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{path}: no {START} ... {END} markers")
    path.write_text(pattern.sub(lambda _m: f"{START}\n{rendered}\n{END}", text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="side_by_side.py --json output")
    parser.add_argument("--update", nargs="*", type=Path, default=[], help="documents to rewrite")
    args = parser.parse_args(argv)
    rendered = table(json.loads(args.results.read_text()))
    for path in args.update:
        update(path, rendered)
    if not args.update:
        print(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
