"""The chaos suite, long version: runs the scenarios of scenarios.py again and again, each in a
fresh world (private Valkey, SQLite or a private PostgreSQL, API and workers as processes), until
the requested number of faults was injected, shared equally among the scenarios; then writes a
report (markdown with the figures as JSON at the end).

    python -m tests.chaos.run_long --faults 1000 --report docs/chaos_report.md

Per scenario: runs, faults injected, tasks accepted, lost, duplicate results, over-runs (a task
started more often than its attempts say), time to detect and time to reassign (p50 / p99 / max;
what they measure differs per fault and is stated in the report). Scenarios this machine cannot
inject (partitions and a full disk need root, clock skew libfaketime) are skipped and listed.
The exit status is 1 when anything was lost, duplicated or violated, 0 otherwise. Work
directories (with every process's log) are kept for runs that found a problem, deleted otherwise
(--keep keeps them all)."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.chaos.scenarios import (
    API_ENV,
    FIXED_BUGS,
    KNOWN_BUGS,
    SCENARIOS,
    Outcome,
    percentile,
    run_scenario,
)

MAX_ERRORS_PER_SCENARIO = 3  # a scenario that keeps breaking off is given up, not looped on
RUN_TIMEOUT = 900.0  # seconds for one run of one scenario


@dataclass
class Totals:
    scenario: str
    runs: int = 0
    faults: int = 0
    accepted: int = 0
    tasks: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    lost: int = 0
    duplicates: int = 0
    overruns: int = 0
    detect: list[float] = field(default_factory=list)
    reassign: list[float] = field(default_factory=list)
    rejoin: list[float] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, outcome: Outcome, workdir: Path | None) -> None:
        self.runs += 1
        for name in (
            "faults",
            "accepted",
            "tasks",
            "completed",
            "failed",
            "cancelled",
            "lost",
            "duplicates",
            "overruns",
        ):
            setattr(self, name, getattr(self, name) + getattr(outcome, name))
        self.detect += outcome.detect
        self.reassign += outcome.reassign
        self.rejoin += outcome.rejoin
        self.violations += outcome.violations
        if outcome.error:
            self.errors.append(outcome.error)
        if workdir is not None:
            self.kept.append(str(workdir))
        self.seconds += outcome.seconds

    def stats(self, values: list[float]) -> dict[str, float | None]:
        def at(q: float) -> float | None:
            value = percentile(values, q)
            return None if value is None else round(value, 3)

        return {
            "n": len(values),
            "p50": at(50),
            "p95": at(95),
            "p99": at(99),
            "max": round(max(values), 3) if values else None,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "runs": self.runs,
            "faults": self.faults,
            "accepted": self.accepted,
            "tasks": self.tasks,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "overruns": self.overruns,
            "time_to_detect_s": self.stats(self.detect),
            "time_to_reassign_s": self.stats(self.reassign),
            "time_to_rejoin_s": self.stats(self.rejoin),
            "violations": len(self.violations),
            "violation_samples": self.violations[:20],
            "errors": self.errors,
            "kept_workdirs": self.kept,
            "seconds": round(self.seconds, 1),
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", type=int, default=1000, help="faults to inject in total")
    parser.add_argument("--report", type=Path, default=Path("docs/chaos_report.md"))
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument("--keep", action="store_true", help="keep every run's work directory")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown or not args.scenarios:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    if args.faults < 1:
        parser.error("--faults must be at least 1")
    return args


async def run(args: argparse.Namespace) -> dict[str, Totals]:
    # Faults this machine cannot inject (not root, no libfaketime) are left out, and said so.
    args.skipped = {n: r for n in args.scenarios if (r := SCENARIOS[n].unavailable()) is not None}
    for name, reason in args.skipped.items():
        print(f"chaos: skipping {name}: {reason}", flush=True)
    names: list[str] = [n for n in args.scenarios if n not in args.skipped]
    if not names:
        return {}
    share = math.ceil(args.faults / len(names))
    totals = {name: Totals(name) for name in names}
    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="chaos-long-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return await _run_all(args, names, share, totals, workdir)
    finally:
        if args.workdir is None and not any(workdir.iterdir()):  # nothing kept: all went well
            workdir.rmdir()


async def _run_all(
    args: argparse.Namespace, names: list[str], share: int, totals: dict[str, Totals], workdir: Path
) -> dict[str, Totals]:
    print(f"chaos: {args.faults} faults, {share} per scenario; work in {workdir}", flush=True)
    run_number = 0
    while True:
        todo = [
            n
            for n in names
            if totals[n].faults < share and len(totals[n].errors) < MAX_ERRORS_PER_SCENARIO
        ]
        if not todo:
            return totals
        for name in todo:
            run_number += 1
            scenario = SCENARIOS[name]
            faults = min(scenario.faults_per_run, share - totals[name].faults)
            tmp = workdir / f"{run_number:04d}-{name}"
            tmp.mkdir()
            try:
                outcome = await asyncio.wait_for(
                    run_scenario(
                        scenario, tmp, faults, seed=args.seed * 100_000 + run_number,
                        capture_errors=True,
                    ),
                    RUN_TIMEOUT,
                )  # fmt: skip
            except TimeoutError:
                outcome = Outcome(name, error=f"run timed out after {RUN_TIMEOUT:.0f}s")
                outcome.violate(f"scenario aborted: {outcome.error}")
            problem = bool(outcome.violations or outcome.error)
            if problem or args.keep:
                totals[name].add(outcome, tmp)
            else:
                totals[name].add(outcome, None)
                shutil.rmtree(tmp, ignore_errors=True)
            done = sum(t.faults for t in totals.values())
            print(
                f"[{done:>5}/{args.faults}] {name:<24} faults={outcome.faults:<3} "
                f"tasks={outcome.tasks:<4} lost={outcome.lost} dup={outcome.duplicates} "
                f"overrun={outcome.overruns} violations={len(outcome.violations)} "
                f"{outcome.seconds:.1f}s" + (f"  ERROR {outcome.error}" if outcome.error else ""),
                flush=True,
            )
            for line in outcome.violations[:5]:
                print(f"        ! {line}", flush=True)


def _meaning(name: str, total: Totals) -> str:
    scenario = SCENARIOS[name]
    line = f"- **{name}**: detect = {scenario.detect_means}; reassign = {scenario.reassign_means}"
    if total.rejoin:
        line += f"; rejoin p50 / p99 / max = {fmt(total.stats(total.rejoin))} s"
    if scenario.env:
        line += "; with " + ", ".join(f"`{k}={v}`" for k, v in scenario.env.items())
    return line + "."


def fmt(stats: dict[str, float | None]) -> str:
    if not stats["n"]:
        return "n/a"
    return f"{stats['p50']:.2f} / {stats['p99']:.2f} / {stats['max']:.2f}"


def render(totals: dict[str, Totals], args: argparse.Namespace, seconds: float) -> str:
    rows = [t.as_json() for t in totals.values()]
    command = "python -m tests.chaos.run_long " + " ".join(
        shlex.quote(a) for a in sys.argv[1:] or [f"--faults={args.faults}"]
    )
    all_faults = sum(r["faults"] for r in rows)
    bad = sum(r["lost"] + r["duplicates"] + r["overruns"] + r["violations"] for r in rows)
    lines = [
        "# Chaos report",
        "",
        f"Generated {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by `{command}` "
        f"in {seconds / 60:.1f} min on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}.",
        "",
        f"**{all_faults} faults injected, "
        f"{sum(r['accepted'] for r in rows)} tasks accepted, "
        f"{sum(r['lost'] for r in rows)} lost, "
        f"{sum(r['duplicates'] for r in rows)} duplicate results, "
        f"{sum(r['overruns'] for r in rows)} over-runs, "
        f"{sum(r['violations'] for r in rows)} invariant violations.**",
        "",
        "Every run starts a fresh world: a private Valkey (no persistence), SQLite or a private "
        "PostgreSQL 18, the API (uvicorn) and worker processes, configured with "
        + ", ".join(f"`{k}={v}`" for k, v in API_ENV.items())
        + ". After the faults, every task must reach a final state; a completed task must "
        "have exactly one attempt with outcome `completed` and none left `running`; no task may "
        "have more `task.started` events in the worker logs than its attempt number "
        "(see `tests/chaos/scenarios.py:check_invariants`).",
        "",
        "| Scenario | Runs | Faults | Tasks accepted | Lost | Duplicate results | Over-runs "
        "| Not completed | Detect p50 / p99 / max (s) | Reassign p50 / p99 / max (s) "
        "| Violations |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['runs']} | {r['faults']} | {r['accepted']} | {r['lost']} "
            f"| {r['duplicates']} | {r['overruns']} | {r['failed'] + r['cancelled']} "
            f"| {fmt(r['time_to_detect_s'])} | {fmt(r['time_to_reassign_s'])} "
            f"| {r['violations']} |"
        )
    lines += ["", "## What the times measure", ""]
    for name, total in totals.items():
        lines.append(_meaning(name, total))
    for name, reason in getattr(args, "skipped", {}).items():
        lines.append(f"- **{name}**: not run on this machine ({reason}).")
    lines += [
        "",
        "Times come from the database's attempt records (started/ended) and the wall clock of "
        "the fault; all processes run on one machine. *Tasks accepted* counts 2xx answers; "
        "submissions whose answer was lost (an API kill, a client timeout during a stall) may "
        "exist too and are checked like the rest. *Not completed* counts tasks that ended "
        "failed or cancelled: every task of these scenarios is expected to complete, except "
        "the poison tasks and the tasks whose result the database cannot store, which must "
        "fail.",
        "",
    ]
    lines += ["## Bugs found by this suite", ""]
    if KNOWN_BUGS:
        lines += [
            "Open, each pinned by a strict xfail test in `tests/chaos/test_chaos.py` (the "
            "scenarios above do not trigger them):",
            "",
            *(f"- **{key}**: {text}." for key, text in KNOWN_BUGS.items()),
            "",
        ]
    else:
        lines += ["None open.", ""]
    lines += [
        "Fixed (their tests in `tests/chaos/test_chaos.py` remain as regression tests):",
        "",
        *(f"- **{key}**: {text}." for key, text in FIXED_BUGS.items()),
        "",
    ]
    problems = [r for r in rows if r["violations"] or r["errors"]]
    lines += ["## Problems", ""]
    if not problems:
        lines += ["None.", ""]
    for r in problems:
        lines.append(f"### {r['scenario']}")
        lines.append("")
        for text in r["violation_samples"]:
            lines.append(f"- {text}")
        for text in r["errors"]:
            lines.append(f"- error: {text}")
        if r["kept_workdirs"]:
            lines.append(f"- logs kept in: {', '.join(r['kept_workdirs'])}")
        lines.append("")
    lines += [
        "## Figures (JSON)",
        "",
        "```json",
        json.dumps(
            {
                "command": command,
                "faults_requested": args.faults,
                "faults_injected": all_faults,
                "minutes": round(seconds / 60, 1),
                "ok": bad == 0,
                "config": API_ENV,
                "scenarios": rows,
            },
            indent=2,
        ),
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    totals = asyncio.run(run(args))
    text = render(totals, args, time.monotonic() - started)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(f"report written to {args.report}", flush=True)
    bad = any(t.lost or t.duplicates or t.overruns or t.violations for t in totals.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
