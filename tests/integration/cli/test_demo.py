"""`make demo` on a fresh machine: embedded broker, sinks, a local site, real workers, exit 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def test_demo_runs_on_the_embedded_broker_and_shows_every_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TASKLANE_BROKER_URL", "REDIS_URL")}
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # A narrow terminal: the report's long path must still come out whole.
    env |= {"COLUMNS": "80", "TMPDIR": str(scratch)}
    done = subprocess.run(
        [sys.executable, "-m", "tasklane_dev.demo"],
        cwd=tmp_path,
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
    assert "demo finished" in out
    # The report outlives the demo in ./demo-output/; its temporary files (broker data, worker
    # logs) do not.
    report = re.search(r"^HTML report: (.+)$", out, re.MULTILINE)
    assert report, out
    path = Path(report.group(1))
    assert len(str(path)) > 80  # so the line really is wider than the terminal
    assert path.is_file() and path.is_relative_to(tmp_path / "demo-output")
    assert "<html" in path.read_text().lower()
    assert list(scratch.iterdir()) == []
