"""`make demo` on a fresh machine: embedded broker, sinks, a local site, real workers, exit 0."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_runs_on_the_embedded_broker_and_shows_every_end() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TASKLANE_BROKER_URL", "REDIS_URL")}
    done = subprocess.run(
        [sys.executable, "-m", "tasklane_dev.demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
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
    # The catalogue crawl: home, six products, the dead link (404); robots.txt keeps out /admin/.
    assert ": completed, 8 fetched, 1 failed" in out
    assert "pages 9: 8 fetched, 1 failed" in out
    assert "by status: {'200': 7, '404': 1}" in out
    assert "most linked: / (6)" in out
    assert "HTML report: file://" in out
    assert "demo finished" in out
