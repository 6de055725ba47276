"""Metric labels stay bounded whatever task types users invent."""

from __future__ import annotations

from app.utils import monitoring


def test_task_type_labels_are_bounded() -> None:
    labels = {monitoring.task_type_label(f"type-{n}") for n in range(1000)}
    assert len(labels) <= monitoring.MAX_TASK_TYPE_LABELS + 1
    assert "other" in labels
    assert monitoring.task_type_label("type-0") == "type-0"  # a known one keeps its label
