"""Alert rules pass promtool check and unit tests and use catalogue metrics; docs/METRICS.md is current."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from monitoring.dashboards import metric_names_in
from monitoring.docs import RULES_DIR, alert_rules, render_metrics_markdown
from monitoring.metrics import catalogue

REPO = Path(__file__).resolve().parents[2]
RULE_FILES = sorted(RULES_DIR.glob("*.rules.yml"))
RULE_TESTS = sorted((RULES_DIR / "tests").glob("*.yml"))


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True, check=False)


def test_promtool_check_rules() -> None:
    """Every rules file is valid (syntax, PromQL, templates)."""
    assert RULE_FILES, "no monitoring/prometheus/*.rules.yml"
    completed = _promtool("check", "rules", *RULE_FILES)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_promtool_test_rules() -> None:
    """The rule unit tests pass: each alert fires on its series and stays silent on the others."""
    assert RULE_TESTS, "no monitoring/prometheus/tests/*.yml"
    completed = _promtool("test", "rules", *RULE_TESTS)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    """No alert ships without a promtool test that shows it firing and one that shows it silent."""
    firing: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown silent"


def test_rules_use_catalogue_metrics_and_carry_runbooks() -> None:
    """Expressions name only metrics that exist; every alert has severity, summary, description, runbook."""
    known = {spec.name for spec in catalogue()} | {"up"}
    for rule in alert_rules():
        unknown = metric_names_in(rule["expr"]) - known
        assert unknown == set(), f"{rule['alert']} uses {unknown}"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        annotations = rule["annotations"]
        assert annotations["summary"]
        assert annotations["description"]
        assert annotations["runbook_url"].endswith(f"docs/METRICS.md#{rule['alert'].lower()}")


def test_metrics_document_is_generated_from_the_code() -> None:
    """docs/METRICS.md is what the catalogue and rules render (`ingestd monitoring docs --write`)."""
    document = (REPO / "docs" / "METRICS.md").read_text()
    assert document == render_metrics_markdown(), "run `ingestd monitoring docs --write`"
    for spec in catalogue():
        assert f"| `{spec.name}` | {spec.type} |" in document
    for rule in alert_rules():
        assert f"\n### {rule['alert']}\n" in document  # the runbook anchor the rule links to
