"""Task types every worker can run. Importing this module registers them."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import statistics
import sys
import time
from typing import Any

from worker.task_executor import TaskFailure, task

WORD = re.compile(r"\w+", re.UNICODE)


def _parameters(payload: dict[str, Any]) -> dict[str, Any]:
    params = payload.get("parameters") or {}
    if not isinstance(params, dict):
        raise TaskFailure("payload.parameters must be an object")
    return params


@task("echo")
async def echo(payload: dict[str, Any]) -> dict[str, Any]:
    """The result is the payload: the no-op used by benchmarks."""
    return payload


@task("sleep")
async def sleep(payload: dict[str, Any]) -> dict[str, Any]:
    seconds = float(_parameters(payload).get("seconds", 1))
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@task("fail")
async def fail(payload: dict[str, Any]) -> None:
    raise TaskFailure(str(_parameters(payload).get("message", "task failed as requested")))


@task("processing")
def processing(payload: dict[str, Any]) -> dict[str, Any]:
    """Normalise text in payload.data: collapse whitespace, case-fold, count words."""
    data = payload.get("data", "")
    text = data if isinstance(data, str) else repr(data)
    words = WORD.findall(text.casefold())
    return {
        "normalized": " ".join(words),
        "word_count": len(words),
        "unique_words": len(set(words)),
    }


@task("analysis")
def analysis(payload: dict[str, Any], context: Any) -> dict[str, Any]:
    """Statistics of the numbers in payload.data (a list, or text with numbers in it); also
    reports which dependency results it was handed."""
    data = payload.get("data", [])
    values = _numbers(data)
    summary: dict[str, Any] = {
        "count": len(values),
        "inputs_from": sorted(context.dependency_results),
    }
    if values:
        summary |= {
            "min": min(values),
            "max": max(values),
            "mean": statistics.fmean(values),
            "median": statistics.median(values),
            "stdev": statistics.pstdev(values),
        }
    return summary


def _numbers(data: Any) -> list[float]:
    if isinstance(data, list):
        return [float(x) for x in data if isinstance(x, int | float) and not isinstance(x, bool)]
    if isinstance(data, str):
        return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", data)]
    return []


@task("cpu", mode="process")
def cpu(payload: dict[str, Any]) -> dict[str, Any]:
    """Burn CPU: `parameters.iterations` rounds of SHA-256, in a separate process."""
    iterations = int(_parameters(payload).get("iterations", 100_000))
    digest = b"seed"
    for _ in range(iterations):
        digest = hashlib.sha256(digest).digest()
    return {"iterations": iterations, "digest": digest.hex()}


@task("log_lines")
async def log_lines(payload: dict[str, Any]) -> dict[str, Any]:
    """Write to the task's log (docs/architecture.md, "Per-task logs"): `parameters.lines`
    numbered lines to stdout, each also logged at INFO, `parameters.interval` seconds apart,
    then one line to stderr and one WARNING. Shows, and tests, log capture and following."""
    lines, interval = _log_plan(payload)
    for number in range(lines):
        if number and interval:
            await asyncio.sleep(interval)
        _log_line(number)
    return _log_end(lines)


@task("log_lines_process", mode="process")
def log_lines_process(payload: dict[str, Any]) -> dict[str, Any]:
    """log_lines, run in the worker's process pool."""
    lines, interval = _log_plan(payload)
    for number in range(lines):
        if number and interval:
            time.sleep(interval)
        _log_line(number)
    return _log_end(lines)


def _log_plan(payload: dict[str, Any]) -> tuple[int, float]:
    params = _parameters(payload)
    return int(params.get("lines", 3)), float(params.get("interval", 0))


def _log_line(number: int) -> None:
    print(f"line {number}", flush=True)
    logging.getLogger("dts.log_lines").info("logged %d", number)


def _log_end(lines: int) -> dict[str, Any]:
    print("to stderr", file=sys.stderr)
    logging.getLogger("dts.log_lines").warning("done after %d lines", lines)
    return {"lines": lines}
