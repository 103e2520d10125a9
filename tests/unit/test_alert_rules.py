"""deploy/prometheus/alerts.yml: checked by `promtool check rules`, unit-tested by
`promtool test rules` (deploy/prometheus/alerts_test.yml), and read for what operators need.

promtool comes from `make deploy-tools` (Debian's prometheus package). A missing promtool
fails the test. That the metric names exist in the daemon's /metrics is checked by
tests/integration/test_dashboard_metrics.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus"
RULES = RULES_DIR / "alerts.yml"
RULE_TESTS = RULES_DIR / "alerts_test.yml"

# Each condition the operators asked to be alerted on, and the metric that shows it.
REQUIRED = {
    "GlancePollerDown": "up",
    "GlancePollerNotReady": "glance_poller_ready",
    "GlancePollerFeedStale": "glance_poller_cursor_lag_seconds",
    "GlancePollerDeadLetters": "glance_poller_dead_letters_total",
    "GlancePollerSessionsBeyondHorizon": "glance_poller_sessions_beyond_horizon_total",
    "GlancePollerKafkaUnreachable": "glance_poller_broker_reachable",
}


def promtool() -> str:
    found = shutil.which("promtool") or shutil.which("promtool", path=str(ROOT / ".tools/bin"))
    if found is None:
        pytest.fail("promtool is not installed: run `make deploy-tools`", pytrace=False)
    return found


def run(*argv: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *argv], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )


def rules() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return {
        rule["alert"]: rule
        for group in document["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def test_promtool_check_rules() -> None:
    result = run("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = run("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rule_tests_catch_a_wrong_rule(tmp_path: Path) -> None:
    # The unit tests are worth something only if they fail on a rule that alerts too early.
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "GlancePollerNotReady":
                rule["for"] = "1m"
    (tmp_path / RULES.name).write_text(yaml.safe_dump(document))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = run("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "GlancePollerNotReady" in result.stdout + result.stderr


@pytest.mark.parametrize(("alert", "metric"), sorted(REQUIRED.items()))
def test_each_condition_has_its_alert(alert: str, metric: str) -> None:
    rule = rules().get(alert)
    assert rule is not None, f"alerts.yml has no {alert}"
    assert metric in rule["expr"], f"{alert} should watch {metric}: {rule['expr']}"
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    fired: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    assert set(rules()) <= fired, f"never tested firing: {sorted(set(rules()) - fired)}"
    assert set(rules()) <= silent, f"never tested silent: {sorted(set(rules()) - silent)}"
