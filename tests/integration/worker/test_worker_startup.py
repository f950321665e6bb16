"""A notifier worker consumes exactly its derived queues, and refuses bad settings at start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.harness import BrokerEnv, WorkerProcess

TASKLANE = str(Path(sys.executable).with_name("tasklane"))


def test_worker_consumes_exactly_the_queues_of_its_contracts(
    broker: BrokerEnv, tmp_path: Path
) -> None:
    worker = WorkerProcess("notifier", broker.env(), tmp_path / "worker.log", concurrency=1)
    try:
        worker.wait_ready()
        banner = worker.output()
    finally:
        worker.stop()
    ns = broker.namespace
    consumed = sorted(
        line.split(".> ", 1)[1].split()[0]
        for line in banner.splitlines()
        if f".> {ns}" in line  # the banner's [queues] section
    )
    assert consumed == [f"{ns}notifier.email", f"{ns}notifier.im"]


@pytest.mark.parametrize(
    ("name", "value"),
    [("TASKLANE_NOTIFIER_SMTP_PORT", "abc"), ("TASKLANE_NOTIFIER_TEMPLATES_DIR", "/nonexistent")],
)
def test_bad_notifier_setting_stops_the_worker_at_start(
    redis_url: str, name: str, value: str
) -> None:
    env = {**os.environ, "TASKLANE_BROKER_URL": redis_url, name: value}
    done = subprocess.run(
        [TASKLANE, "worker", "notifier"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert f"invalid settings: {name}" in done.stdout + done.stderr
