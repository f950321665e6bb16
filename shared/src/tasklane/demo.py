"""``make demo``: publish a sample email and IM message to a real notifier worker, show both ends.

Without ``TASKLANE_BROKER_URL``/``REDIS_URL`` an embedded Valkey server is the broker. A local SMTP
sink and a webhook sink stand in for the outside world. ``--keep-running`` (``make up``) leaves
the stack up until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel

from tasklane.contracts import SEND_EMAIL, SEND_IM, EmailPayload, IMPayload
from tasklane.publish import Publisher, TaskHandle
from tasklane.settings import Settings
from tasklane.sinks import SmtpSink, WebhookSink

DEMO_SECRET_NAME = "demo-webhook"
DEMO_SECRET = "demo-signing-secret"


@contextlib.contextmanager
def broker_url(console: Console) -> Iterator[str]:
    """The configured broker, or an embedded Valkey server for the demo's lifetime."""
    configured = os.environ.get("TASKLANE_BROKER_URL") or os.environ.get("REDIS_URL")
    if configured:
        console.print(f"broker: [bold]{configured}[/] (from the environment)")
        yield configured
        return
    from tasklane.embedded import EmbeddedBroker

    with EmbeddedBroker() as broker:
        console.print(f"broker: embedded Valkey at [bold]{broker.url}[/]")
        yield broker.url


@contextlib.contextmanager
def notifier_worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real notifier worker process; stopped with a warm shutdown on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("tasklane")), "worker", "notifier",
             "--concurrency", "2", "--", "--without-gossip", "--without-mingle"],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while " ready." not in log.read_text(errors="replace"):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"notifier worker did not start:\n{log.read_text()}")
                time.sleep(0.1)
            yield process
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)


def _show_published(console: Console, handle: TaskHandle[Any]) -> None:
    # Asked right after publishing, like the seed's add.delay(4, 4): normally not ready yet,
    # though a fast worker can win the race.
    console.print(f"published {handle.contract.name}  id={handle.id}  ready: {handle.ready()}")


def run(keep_running: bool = False) -> int:
    """Run the demo; returns the exit status."""
    console = Console(soft_wrap=True)
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(broker_url(console))
        smtp = stack.enter_context(SmtpSink())
        hooks = stack.enter_context(WebhookSink())
        console.print(f"SMTP sink: 127.0.0.1:{smtp.port}   webhook sink: {hooks.url}")
        settings = Settings(broker_url=url, namespace="demo.")
        log = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "worker.log"
        env = {
            "TASKLANE_BROKER_URL": url,
            "TASKLANE_NAMESPACE": settings.namespace,
            "TASKLANE_NOTIFIER_SMTP_PORT": str(smtp.port),
            "TASKLANE_NOTIFIER_WEBHOOK_ALLOW": "127.0.0.1/32",  # the local webhook sink
            "TASKLANE_NOTIFIER_DEFAULT_SENDER": "demo@example.org",
            "TASKLANE_NOTIFIER_SECRETS": json.dumps({DEMO_SECRET_NAME: DEMO_SECRET}),
        }
        with console.status("starting the notifier worker…"):
            stack.enter_context(notifier_worker(env, log))
        console.print("notifier worker: [green]ready[/]")
        publisher = stack.enter_context(Publisher(settings))

        email = publisher.publish(
            SEND_EMAIL,
            EmailPayload(
                to=["ada@example.com"],
                subject="Welcome to Tasklane",
                template="welcome",
                context={"name": "Ada", "product": "Tasklane"},
            ),
        )
        _show_published(console, email)
        im = publisher.publish(
            SEND_IM,
            IMPayload(
                channel="webhook",
                url=f"{hooks.url}/hooks/deploys",
                title="Deploy finished",
                text="notifier v0.1.0 is live",
                secret_ref=DEMO_SECRET_NAME,
            ),
        )
        _show_published(console, im)
        for handle in (email, im):
            result = handle.get(timeout=30)
            console.print(f"{handle.contract.name} ready: {handle.ready()}  result: {result!r}")

        mail = smtp.wait_for(1)[0].message
        text = mail.get_body(("plain",))
        console.print(
            Panel(
                f"From: {mail['From']}\nTo: {mail['To']}\nSubject: {mail['Subject']}\n"
                f"Message-ID: {mail['Message-ID']}\n\n{text.get_content() if text else ''}",
                title="SMTP sink received",
            )
        )
        request = hooks.wait_for(1)[0]
        console.print(
            Panel(
                f"POST {request.path}\nX-Tasklane-Signature: "
                f"{request.headers.get('x-tasklane-signature')}\n\n{request.body.decode()}",
                title="webhook sink received",
            )
        )
        if keep_running:
            console.print("stack is up; publish with `tasklane submit …` — Ctrl-C stops it")
            console.print(f"export TASKLANE_BROKER_URL={url} TASKLANE_NAMESPACE=demo.")
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    console.print("[green]demo finished[/]: everything shut down")
    return 0


def main() -> None:
    """Entry point of ``python -m tasklane.demo``."""
    sys.exit(run(keep_running="--keep-running" in sys.argv[1:]))


if __name__ == "__main__":
    main()
