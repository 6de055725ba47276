"""The operations artefacts in deploy/: Prometheus alert rules that promtool accepts and whose
unit tests (deploy/prometheus/alerts_test.yml) pass, and a Grafana dashboard whose every query
names metrics the API exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import app.utils.monitoring  # noqa: F401  (registers the metrics)

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy/prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="needs promtool (Debian: apt-get install prometheus)"
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=PROMETHEUS, capture_output=True, text=True, check=False
    )


def exported() -> set[str]:
    """Every sample name the API can expose (counters with _total, histograms with _bucket...)."""
    names = {"up"}
    for family in REGISTRY.collect():
        if family.name.startswith("dts_"):
            names |= {family.name, f"{family.name}_total"}
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count", "created")}
    return names


def metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\b(dts_[a-z_]+|up)\b(?=\s*[{\[)])", expression))


@needs_promtool
def test_alert_rules_are_valid() -> None:
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_alert_rules_fire_when_they_should_and_only_then() -> None:
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_runbook_entry_and_a_unit_test() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    operations = (ROOT / "docs/operations.md").read_text().lower()
    unit_tests = (PROMETHEUS / "alerts_test.yml").read_text()
    for rule in rules:
        anchor = rule["annotations"]["runbook"].split("#")[1]
        assert f"### {rule['alert'].lower()}" in operations, f"{rule['alert']}: no runbook entry"
        assert anchor == rule["alert"].lower()
        assert f"alertname: {rule['alert']}" in unit_tests, f"{rule['alert']}: not unit-tested"
        assert metric_names(rule["expr"]) <= exported(), rule["alert"]


def test_grafana_dashboard_queries_name_exported_metrics() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboard.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(expressions) >= 10
    for expression in expressions:
        names = metric_names(expression)
        assert names, expression
        assert names <= exported(), f"{expression}: {names - exported()} not exported"


def test_the_metric_check_can_fail() -> None:
    assert metric_names("rate(dts_no_such_metric_total[5m])") - exported() == {
        "dts_no_such_metric_total"
    }
