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
CELERY_RULES = ROOT / "deploy" / "prometheus" / "celery-mixin-rules.yaml"
CELERY_TESTS = Path(__file__).parent / "celery_mixin" / "celery-mixin-rules.test.yaml"


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


# ----------------------------------------------------------------- celery-mixin recording rules


def recorded_names() -> list[str]:
    groups = yaml.safe_load(CELERY_RULES.read_text())["groups"]
    return [rule["record"] for group in groups for rule in group["rules"]]


def test_celery_mixin_rules_pass_promtool_check(promtool: str) -> None:
    done = subprocess.run(
        [promtool, "check", "rules", str(CELERY_RULES)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(recorded_names())} rules found" in done.stdout


def test_celery_mixin_rules_pass_their_unit_tests_beside_the_mixins_alerts(promtool: str) -> None:
    # The test file loads the mixin's vendored alerts too: they must fire on the recorded series.
    done = subprocess.run(
        [promtool, "test", "rules", CELERY_TESTS.name],
        capture_output=True,
        text=True,
        cwd=CELERY_TESTS.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_celery_mixin_rule_is_unit_tested_and_every_mixin_alert_fires() -> None:
    tests = yaml.safe_load(CELERY_TESTS.read_text())["tests"]
    labels = [
        sample["labels"]
        for test in tests
        for case in test.get("promql_expr_test", [])
        for sample in case["exp_samples"]
    ]
    checked = {re.sub(r'^\{__name__="(\w+)".*', r"\1", one).split("{")[0] for one in labels}
    assert set(recorded_names()) <= checked
    assert len(recorded_names()) == len(set(recorded_names()))
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    mixin = yaml.safe_load((CELERY_TESTS.parent / "prometheus_alerts.yaml").read_text())
    assert fired == {rule["alert"] for group in mixin["groups"] for rule in group["rules"]}


def test_recorded_series_carry_the_labels_the_mixin_selects_by() -> None:
    # Every celery series lands in one job matching the mixin's default selector, with the
    # scraped job kept; task series get name and queue_name, worker series hostname.
    for group in yaml.safe_load(CELERY_RULES.read_text())["groups"]:
        for rule in group["rules"]:
            record, expr = rule["record"], rule["expr"]
            assert re.fullmatch(".*celery.*", rule["labels"]["job"]), record
            assert '"exported_job", "$1", "job", "(.*)"' in expr, record
            if record.startswith("celery_task_"):
                assert '"name", "$1", "task", "(.*)"' in expr, record
            if record.startswith(("celery_task_", "celery_queue_", "celery_active_")):
                assert '"queue_name", "$1", "queue", "(.*)"' in expr, record
            if record.startswith(("celery_task_", "celery_worker_")):
                assert '"hostname", "$1", "pod", "(.+)"' in expr, record
