"""Chaos suite: faults injected into the real stack (API, workers, Valkey, PostgreSQL processes).

The scenarios live in `scenarios.py`; `test_chaos.py` runs each one briefly (part of the normal
suite, marked `chaos`), and `run_long.py` runs them until a given number of faults was injected
and writes a report (`python -m tests.chaos.run_long --faults 1000 --report docs/chaos_report.md`).
`system.py` injects the faults of the machine (network partitions with network namespaces, a full
disk, skewed clocks; root and libfaketime, skipped without them), and `chaos_tasks.py` holds the
test-only task types (a poison task, results the database cannot store).
"""
