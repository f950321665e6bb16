"""Alert rules pass promtool's checks and unit tests; every alert is tested and has a runbook."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "deploy" / "prometheus" / "tasklane-alerts.yaml"
TESTS = ROOT / "tests" / "alerts" / "tasklane-alerts.test.yaml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("TASKLANE_REQUIRE_PROMTOOL"):
            pytest.fail("promtool is required (Debian package prometheus) but not installed")
        pytest.skip("promtool not installed: apt-get install prometheus (.ci/run does)")
    return found


def alert_names() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_rules_pass_promtool_check(promtool: str) -> None:
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in done.stdout


def test_rules_pass_their_unit_tests(promtool: str) -> None:
    done = subprocess.run([promtool, "test", "rules", str(TESTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_has_a_runbook() -> None:
    tests = yaml.safe_load(TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    runbook_anchors = {
        re.sub(r"[^a-z0-9]", "", line.lstrip("#").strip().lower())
        for line in RUNBOOKS.read_text().splitlines()
        if line.startswith("## ")
    }
    for alert in alert_names():
        assert alert in fired, f"{alert} has no promtool test where it fires"
        assert alert.lower() in runbook_anchors, f"{alert} has no section in docs/runbooks.md"
