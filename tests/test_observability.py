"""The observability pack (deploy/observability): Prometheus's config and alert rules
checked and unit-tested with Debian's promtool, and the Grafana dashboard's every PromQL
expression parsed and naming only metrics the services export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.debian import debian_program

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / "deploy" / "observability"


@pytest.fixture(scope="module")
def promtool() -> str:
    return debian_program("promtool", "prometheus")


def run(promtool: str, *args: str, cwd: Path = PACK) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def exported_metrics() -> set[str]:
    """Every series name the services' code declares, with the suffixes the client adds."""
    names: set[str] = set()
    for path in [*ROOT.glob("services/**/*.py"), *ROOT.glob("shared/**/*.py")]:
        for kind, name in re.findall(r'\b(Counter|Gauge|Histogram)\(\s*"(edgeinfer_\w+)"',
                                     path.read_text()):
            names |= {"Counter": {f"{name}_total"}, "Gauge": {name},
                      "Histogram": {f"{name}_bucket", f"{name}_count", f"{name}_sum"}}[kind]
    return names


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bedgeinfer_\w+", expr))


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((PACK / "grafana-dashboard.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def test_the_prometheus_config_is_valid(promtool: str, tmp_path: Path) -> None:
    pack = shutil.copytree(PACK, tmp_path / "pack")
    (pack / "secrets" / "edgeinfer-metrics-token").write_text("token\n")  # the operator's
    checked = run(promtool, "check", "config", "prometheus.yml", cwd=pack)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_alert_rules_are_valid_and_their_unit_tests_pass(promtool: str) -> None:
    checked = run(promtool, "check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run(promtool, "test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {r["alert"] for g in yaml.safe_load((PACK / "alerts.yml").read_text())["groups"]
              for r in g["rules"]}
    tested_alerts = set(re.findall(r"alertname: (\w+)", (PACK / "alerts_test.yml").read_text()))
    assert alerts == tested_alerts, "every alert has a unit test"
    # What issue 18 asks them to cover.
    assert {"EdgeinferReconciliationDrift", "EdgeinferDeadLetters", "EdgeinferMeteringLag",
            "EdgeinferColdStartRate", "EdgeinferBudgetStops",
            "EdgeinferRunnerHeartbeatsMissing"} <= alerts


def test_every_dashboard_expression_parses_and_names_only_exported_metrics(
        promtool: str, tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": expr} for i, expr in enumerate(exprs)]}]}
    (tmp_path / "dashboard-rules.yml").write_text(yaml.safe_dump(rules))
    parsed = run(promtool, "check", "rules", "dashboard-rules.yml", cwd=tmp_path)
    assert parsed.returncode == 0, parsed.stdout + parsed.stderr
    exported = exported_metrics()
    alerts = (PACK / "alerts.yml").read_text()
    for expr in [*exprs, *re.findall(r"expr: (.+?)(?:\n\s+for:|\n\s+labels:)", alerts, re.S)]:
        unknown = metric_names(expr) - exported
        assert not unknown, f"{expr!r} names metrics no service exports: {unknown}"
