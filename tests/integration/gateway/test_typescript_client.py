"""The generated TypeScript client (clients/typescript) against a running gateway and worker.

``npm test`` there runs test/gateway.test.ts under ``node --test``: it publishes emails through
the gateway, to a real notifier worker, and reads their typed results. The SMTP sink here is the
independent proof that they were delivered, with the Message-IDs the client read back.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tasklane_dev.sinks import SmtpSink
from tests.support.gateway import GatewayProcess, publisher_entry
from tests.support.harness import WorkerProcess
from tests.support.node import require_client

RECIPIENT = "ada@example.com"
TOKEN = secrets.token_urlsafe(32)


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_the_typescript_client_publishes_an_email_and_reads_its_typed_result(
    smtp_sink: SmtpSink,
    start_worker: Callable[..., WorkerProcess],
    start_gateway: Callable[..., GatewayProcess],
    tmp_path: Path,
) -> None:
    client = require_client()
    start_worker()
    gateway = start_gateway([publisher_entry("typescript", TOKEN, ["notifier.email.*"])])
    subject = f"From TypeScript {uuid.uuid4().hex[:8]}"
    results = tmp_path / "message-ids.json"
    env = {
        **os.environ,
        "TASKLANE_CLIENT_TEST_BASE_URL": gateway.url,
        "TASKLANE_CLIENT_TEST_TOKEN": TOKEN,
        "TASKLANE_CLIENT_TEST_EMAIL_TO": RECIPIENT,
        "TASKLANE_CLIENT_TEST_SUBJECT": subject,
        "TASKLANE_CLIENT_TEST_IDEMPOTENCY_KEY": uuid.uuid4().hex,
        "TASKLANE_CLIENT_TEST_RESULT_FILE": str(results),
    }
    npm = shutil.which("npm")
    assert npm is not None  # require_client checked
    run = subprocess.run(
        [npm, "test"], cwd=client, env=env, capture_output=True, text=True, timeout=600
    )
    report = f"{run.stdout}\n{run.stderr}\n--- gateway log:\n{gateway.output()}"
    assert run.returncode == 0, report
    assert "# pass 3" in run.stdout and "# skipped 0" in run.stdout, report

    # One email, then a batch of two (the replayed publish answered the first task id).
    mails = smtp_sink.wait_for(3, timeout=60)
    read_back: dict[str, str] = json.loads(results.read_text(encoding="utf-8"))
    delivered = {mail.message["Subject"]: mail for mail in mails}
    assert (
        sorted(delivered)
        == sorted(read_back)
        == sorted([subject, f"{subject} (batch 1)", f"{subject} (batch 2)"])
    )
    for mail_subject, message_id in read_back.items():
        mail = delivered[mail_subject]
        assert mail.message["Message-ID"] == message_id
        assert mail.recipients == [RECIPIENT]
        assert mail.message.get_content().strip() == "Sent from the TypeScript client."
