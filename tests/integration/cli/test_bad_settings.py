"""Every entry point stops on a bad ``TASKLANE_*`` value with one line on stderr and exit status 2.

Real processes, as Kubernetes and the test harness start them: the workers, Beat and Flower
through ``celery -A`` (which imports the app module itself), and the ``tasklane`` commands. No
broker is reached: each process stops before it connects.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TASKLANE = str(Path(sys.executable).with_name("tasklane"))
CELERY = [sys.executable, "-m", "celery"]
#: A well-formed broker: the bad value is the only thing wrong (nothing connects to it).
BROKER = "redis://127.0.0.1:6379/15"
FLOWER_AUTH = "admin:a-long-enough-password"

ENTRY_POINTS = [
    pytest.param(
        [*CELERY, "-A", "notifier.app", "worker"],
        {"TASKLANE_NOTIFIER_SMTP_PORT": "70000"},
        id="celery-notifier-worker",
    ),
    pytest.param(
        [*CELERY, "-A", "scraper.app", "worker"],
        {"TASKLANE_SCRAPER_ALLOW": "10.0.0.0/8,*"},
        id="celery-scraper-worker",
    ),
    pytest.param(
        [*CELERY, "-A", "media.app", "worker"],
        {"TASKLANE_MEDIA_MAX_VIDEO_SECONDS": "-1"},
        id="celery-media-worker",
    ),
    pytest.param(
        [*CELERY, "-A", "tasklane.beat.celery", "beat"],
        {"TASKLANE_BEAT_LOCK_TTL": "forever"},
        id="celery-beat",
    ),
    pytest.param(
        [*CELERY, "-A", "tasklane.observability.flower_app", "flower"],
        {"TASKLANE_TIMEZONE": "Mars/Olympus"},
        id="celery-flower",
    ),
    # The finding, as the harness and the container start workers: the CLI checks the settings
    # and execs celery, whose app module checks them against the contracts: 30 is not above the
    # longest hard time limit.
    pytest.param(
        [TASKLANE, "worker", "notifier"],
        {"TASKLANE_VISIBILITY_TIMEOUT": "30"},
        id="tasklane-worker",
    ),
    pytest.param([TASKLANE, "beat"], {"TASKLANE_BEAT_MAX_INTERVAL": "0"}, id="tasklane-beat"),
    pytest.param(
        [TASKLANE, "beat", "--app", "tests.support.beat_hang_app"],
        {"TASKLANE_BEAT_LOCK_TTL": "forever"},
        id="tasklane-beat-own-app",
    ),
    pytest.param([TASKLANE, "flower"], {"TASKLANE_FLOWER_PORT": "http"}, id="tasklane-flower"),
    pytest.param(
        [TASKLANE, "exporter"], {"TASKLANE_PREFETCH_MULTIPLIER": "0"}, id="tasklane-exporter"
    ),
    pytest.param(
        [TASKLANE, "schedule-api"], {"TASKLANE_NAMESPACE": "Bad."}, id="tasklane-schedule-api"
    ),
    pytest.param(
        [TASKLANE, "queues"], {"TASKLANE_SOFT_SHUTDOWN_TIMEOUT": "soon"}, id="tasklane-queues"
    ),
]


def run(command: list[str], bad: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("TASKLANE_") and name != "REDIS_URL"
    }
    if "REDIS_URL" not in bad:  # else the fallback it is
        env["TASKLANE_BROKER_URL"] = BROKER
    env |= {
        "TASKLANE_FLOWER_BASIC_AUTH": FLOWER_AUTH,
        "TASKLANE_SCHEDULE_API_TOKEN": "a-long-enough-api-token",
        **bad,
    }
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def assert_one_line(done: subprocess.CompletedProcess[str], variable: str) -> str:
    """The process failed with exit status 2 and one line on stderr naming ``variable``."""
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert lines[0].startswith("error: ")
    assert variable in lines[0]
    return lines[0]


@pytest.mark.parametrize(("command", "bad"), ENTRY_POINTS)
def test_a_bad_setting_stops_the_entry_point_with_one_line(
    command: list[str], bad: dict[str, str]
) -> None:
    [(variable, value)] = bad.items()
    line = assert_one_line(run(command, bad), variable)
    assert value in line


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("TASKLANE_SOFT_SHUTDOWN_TIMEOUT", "-5", "should be greater than or equal to 0 (got '-5')"),
        ("REDIS_URL", "http://cache:6379", "unsupported broker scheme 'http'"),
        # The broker URL's password is masked.
        ("TASKLANE_BROKER_URL", "mysql://app:hunter2@db/1", "(got 'mysql://app:***@db/1')"),
    ],
)
def test_the_line_says_the_value_and_what_is_expected(
    variable: str, value: str, expected: str
) -> None:
    line = assert_one_line(run([TASKLANE, "queues"], {variable: value}), variable)
    assert expected in line
    assert "hunter2" not in line


def test_a_secret_is_not_echoed() -> None:
    done = run([TASKLANE, "flower", "--print"], {"TASKLANE_FLOWER_BASIC_AUTH": "admin:sesame-open"})
    line = assert_one_line(done, "TASKLANE_FLOWER_BASIC_AUTH")
    assert "sesame-open" not in done.stderr + done.stdout
    assert line.endswith("(secret value not shown)")
