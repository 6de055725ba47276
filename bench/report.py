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

from side_by_side import HIGHER, LOWER, Row, _get, ratios

START, END = "<!-- side-by-side:start -->", "<!-- side-by-side:end -->"
SYSTEMS = {"celery": "Celery", "dramatiq": "Dramatiq", "ours-sqlite": "ours, SQLite"}
SYSTEMS["ours-postgres"] = "ours, PostgreSQL"
# (label, path in each system's results, which way is better: None for context, no ratio)
LATENCY = ("latency", "submit_to_start_ms")
ROWS = [
    Row("Drain of 10k queued no-op tasks (tasks/s)", ("drain", "drain_tasks_per_s"), "", HIGHER),
    Row("Enqueue, 1 producer, no workers (tasks/s)", ("enqueue", "tasks_per_s"), "", HIGHER),
    Row("Enqueue, 16 producers, workers on (tasks/s)", ("enqueue_live", "tasks_per_s"), "", HIGHER),
    Row("200/s open loop: rate achieved (tasks/s)", ("latency", "achieved_rate"), ""),
    Row("200/s open loop: submit→start p50 (ms)", (*LATENCY, "p50"), "", LOWER),
    Row("200/s open loop: submit→start p99 (ms)", (*LATENCY, "p99"), "", LOWER),
    Row("Others' CPU during the drain (% of machine)", ("drain", "cpu", "others_pct"), ""),
    Row("Others' CPU during the open loop (% of machine)", ("latency", "cpu", "others_pct"), ""),
]
Json = dict[str, Any]


def cell(number: Any) -> str:
    if not isinstance(number, int | float):
        return "-"
    return f"{number:,.0f}" if abs(number) >= 100 else f"{number:,.1f}"


def table(document: Json) -> str:
    results = document["results"]
    systems = [s for s in SYSTEMS if s in results]
    ours = [s for s in systems if s.startswith("ours-")]
    header = ["", *(SYSTEMS[s] for s in systems), *(f"{SYSTEMS[s]} / best peer" for s in ours)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row in ROWS:
        found = ratios(results, row)  # the side-by-side's own: ours / best peer
        cells = [cell(_get(results.get(s, {}), row.path)) for s in systems]
        cells += [f"{found[s]:.2f}×" if s in found else "" for s in ours]
        lines.append("| " + " | ".join([row.label, *cells]) + " |")
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
