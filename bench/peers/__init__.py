"""Peers of bench/side_by_side.py: the same no-op task on Celery and on Dramatiq.

Needs the bench-only requirements: ``pip install -r bench/requirements-bench.txt``.
"""
