"""`make demo` on a fresh machine: embedded broker, sinks, a real worker, exit 0."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_on_the_embedded_broker_and_shows_both_ends() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TASKLANE_BROKER_URL", "REDIS_URL")}
    done = subprocess.run(
        [sys.executable, "-m", "tasklane.demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "embedded Valkey" in out
    # Right after publishing a handle is normally not ready; a fast worker may win one race.
    assert out.count("published notifier.") == 2
    assert "ready: False" in out
    assert "notifier.email.send ready: True" in out
    assert "Subject: Welcome to Tasklane" in out  # what the SMTP sink received
    assert "X-Tasklane-Signature: sha256=" in out  # what the webhook sink received
    assert "demo finished" in out
