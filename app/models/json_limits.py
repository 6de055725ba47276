"""What a JSON value must be for both stores to hold it exactly, checked before anything is
written: PostgreSQL text and JSONB cannot hold a NUL character (\\u0000); integers beyond 64 bits
do not survive the JSON encoder (orjson) nor SQLite's JSON functions, and JSONB turns numbers that
large into integers; NaN and Infinity are not
JSON; and a document nested deeper than the encoders' recursion limits cannot be written back.

The limits are constants, not settings: the worker builds its reports with the same models, so
both sides must agree on them without sharing a configuration."""

from __future__ import annotations

import math
from typing import Any

import orjson

# Nesting of objects and arrays: far above any real payload, far below orjson's 255 (encoding)
# and pydantic-core's 200 (parsing), so the refusal is ours, with a clear message, never theirs.
MAX_JSON_DEPTH = 64
MIN_JSON_INT, MAX_JSON_INT = -(2**63), 2**63 - 1
# A result is stored with its task and passed to every dependent; an error is a message.
MAX_RESULT_BYTES = 1024 * 1024
MAX_ERROR_CHARS = 16 * 1024
NUL = "\x00"
NUL_PROBLEM = "contains a NUL character (\\u0000), which PostgreSQL cannot store"


def _where(path: tuple[str | int, ...]) -> str:
    """A JSONPath-like location ('$.rows[3].name'), cut short for very deep ones."""
    where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    return where if len(where) <= 120 else where[:117] + "..."


def _scalar_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return NUL_PROBLEM if NUL in value else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int) and not MIN_JSON_INT <= value <= MAX_JSON_INT:
        return "is an integer outside the signed 64-bit range"
    if isinstance(value, float) and not math.isfinite(value):
        return "is not a finite number"
    if isinstance(value, float) and not MIN_JSON_INT <= value <= MAX_JSON_INT:
        # PostgreSQL's JSONB gives 1e20 back as the integer 100000000000000000000, which then
        # falls foul of the integer limit above wherever it is read.
        return "is a number outside the signed 64-bit range"
    return None


def _storable(value: Any, depth: int, max_depth: int) -> bool:
    """The fast check, without keeping track of where: it runs on every payload and result.
    Recursion is bounded by max_depth."""
    kind = type(value)
    if kind is str:
        return NUL not in value
    if kind is dict or kind is list:
        return depth < max_depth and _storable_children(value, depth + 1, max_depth)
    if kind is int:
        return bool(MIN_JSON_INT <= value <= MAX_JSON_INT)
    if kind is float:
        return math.isfinite(value) and MIN_JSON_INT <= value <= MAX_JSON_INT
    if value is None or kind is bool:
        return True
    # Subclasses (IntEnum, OrderedDict, ...): the walk below sorts them out.
    return False


def _storable_children(value: dict[str, Any] | list[Any], depth: int, max_depth: int) -> bool:
    if isinstance(value, list):
        return all(_storable(child, depth, max_depth) for child in value)
    for key, child in value.items():
        if NUL in key or not _storable(child, depth, max_depth):
            return False
    return True


def json_problem(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why `value` cannot be stored as JSON on every backend, naming where; None if it can."""
    if _storable(value, 0, max_depth):
        return None
    return _locate_problem(value, max_depth)


def _locate_problem(value: Any, max_depth: int) -> str | None:
    """The slow walk, keeping the path, for the message. Iterative: no recursion limit."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict | list):
            if len(path) >= max_depth:
                return f"{_where(path)} is nested deeper than {max_depth} levels"
            if isinstance(item, list):
                stack.extend((v, (*path, i)) for i, v in enumerate(item))
                continue
            for key, child in item.items():
                if NUL in key:
                    return f"a key in {_where(path)} contains a NUL character (\\u0000)"
                stack.append((child, (*path, key)))
            continue
        problem = _scalar_problem(item)
        if problem is not None:
            return f"{_where(path)} {problem}"
    return None


def check_json(value: Any) -> Any:
    """Pydantic AfterValidator: refuse (422) what a store cannot hold."""
    problem = json_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def result_problem(result: Any) -> str | None:
    """Why a task's result cannot be stored, or None."""
    problem = json_problem(result)
    if problem is not None:
        return problem
    size = len(orjson.dumps(result))
    if size > MAX_RESULT_BYTES:
        return f"the result is {size} bytes; the limit is {MAX_RESULT_BYTES}"
    return None


def storable_text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """An error message as a store can hold it: NUL made visible, and cut at `limit`."""
    if NUL in text:
        text = text.replace(NUL, "\\u0000")
    if len(text) > limit:
        text = text[:limit] + " [truncated]"
    return text
