"""``make demo-django``: the quick start end to end, on an embedded broker and SQLite.

It starts a real notifier worker, an SMTP sink and a webhook sink standing in for DingTalk,
migrates a fresh SQLite database, posts an order to ``POST /orders/`` (Django's test client),
shows its two outbox rows pending, starts ``manage.py tasklane_relay``, shows them sent, and
checks what arrived: the confirmation email, and the robot message with its DingTalk signature
verified. Then it stops everything; the exit status is 0 when every step did what it should.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from tasklane_dev.demo import broker_url, service_worker
from tasklane_dev.sinks import ReceivedRequest, SmtpSink, WebhookSink

HERE = Path(__file__).resolve().parent
NAMESPACE = "quickstart."
ACCESS_TOKEN = "demo-access-token"
# The robot's signing secret, known to the notifier (and to DingTalk) only; the payload names it.
ROBOT_SECRET_REF = "dingtalk-orders"
ROBOT_SECRET = "SECdemo-robot-signing-secret"
ORDER = {"customer_email": "ada@example.com", "item": "Blue kettle", "quantity": 2}
# DingTalk refuses a signed request whose timestamp is more than an hour off.
SIGNATURE_MAX_AGE_MS = 3_600_000


class DemoFailed(Exception):
    """A step did not do what it should; the message says which."""


def say(console: Console, text: str) -> None:
    console.print(text, markup=False, highlight=False)


def wait_until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """``check()``'s first truthy value, polled; :class:`DemoFailed` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def outbox_rows() -> list[Any]:
    from tasklane.contrib.django.models import OutboxMessage

    return list(OutboxMessage.objects.order_by("id"))


def show_outbox(console: Console, heading: str) -> list[Any]:
    rows = outbox_rows()
    say(console, heading)
    for row in rows:
        sent = f"  sent_at {row.sent_at:%H:%M:%S.%f}" if row.sent_at else ""
        say(
            console,
            f"  outbox row {row.id}: {row.contract:<20} task {row.task_id}  {row.state}"
            f"  attempts {row.attempts}{sent}",
        )
    return rows


@contextlib.contextmanager
def relay(log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python manage.py tasklane_relay`` of the quick start, stopped with SIGTERM on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "tasklane_relay"],
            cwd=HERE,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(
                lambda: process.poll() is not None or "relaying outbox rows" in log.read_text(),
                "the relay to start",
            )
            if process.poll() is not None:
                raise DemoFailed(f"the relay exited:\n{log.read_text()}")
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def dingtalk_sign(secret: str, timestamp_ms: str) -> str:
    """The signature DingTalk expects, computed here as DingTalk's server does."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode()


def check_robot_request(request: ReceivedRequest) -> None:
    """The request a DingTalk robot would take: its URL, token, fresh timestamp and signature."""
    query = request.query
    if request.path != "/robot/send" or query.get("access_token") != ACCESS_TOKEN:
        raise DemoFailed(f"the robot message went to {request.target}")
    timestamp = query.get("timestamp", "")
    if not timestamp.isdigit() or abs(time.time() * 1000 - int(timestamp)) > SIGNATURE_MAX_AGE_MS:
        raise DemoFailed(f"the robot message's timestamp {timestamp!r} is not current")
    expected = dingtalk_sign(ROBOT_SECRET, timestamp)
    if not hmac.compare_digest(query.get("sign", ""), expected):
        raise DemoFailed(f"the robot message's signature {query.get('sign')!r} is wrong")


def setup_django(console: Console, env: dict[str, str]) -> None:
    """Configure the quick start in this process and migrate its fresh SQLite database."""
    import django
    from django.core import checks
    from django.core.management import call_command

    os.environ.update(env)
    sys.path.insert(0, str(HERE))
    django.setup()
    call_command("migrate", verbosity=0, skip_checks=True)
    say(console, f"database: SQLite at {env['QUICKSTART_SQLITE']}, migrated")
    for message in checks.run_checks(include_deployment_checks=False):
        # On SQLite the relay polls and must run alone: expected here (tasklane.W001).
        say(console, f"system check {message.id}: {message.msg} ({message.hint})")


def post_orders(console: Console) -> dict[str, Any]:
    """Post one good order and one bad one; returns the good one's answer."""
    from django.test import Client

    from tasklane.contrib.django.models import OutboxMessage

    client = Client(HTTP_HOST="localhost")
    response = client.post("/orders/", ORDER, content_type="application/json")
    say(console, f"POST /orders/ {json.dumps(ORDER)} -> {response.status_code} {response.json()}")
    if response.status_code != 201:
        raise DemoFailed(f"the order was not created: {response.status_code}")
    bad = client.post(
        "/orders/", {**ORDER, "customer_email": "nobody"}, content_type="application/json"
    )
    say(console, f"POST /orders/ with customer_email 'nobody' -> {bad.status_code} {bad.json()}")
    if bad.status_code != 400 or OutboxMessage.objects.count() != 2:
        raise DemoFailed("the invalid order was not refused, or it wrote to the outbox")
    return dict(response.json())


def show_admin(console: Console, task_ids: list[str]) -> None:
    """The outbox as the admin lists it (Tasklane → Outbox messages)."""
    from django.contrib.auth.models import User
    from django.test import Client

    client = Client(HTTP_HOST="localhost")
    client.force_login(User.objects.create_superuser("admin", "admin@example.org", None))
    page = client.get("/admin/tasklane/outboxmessage/")
    listed = page.status_code == 200 and all(task_id in page.text for task_id in task_ids)
    say(console, f"admin /admin/tasklane/outboxmessage/ -> {page.status_code}, lists both rows")
    if not listed:
        raise DemoFailed("the admin does not list the outbox rows")


def run() -> int:
    """Run the demo; returns the exit status."""
    console = Console(soft_wrap=True)
    # SQLite, whatever the shell says. And no DJANGO_SETTINGS_MODULE for the worker: Celery's
    # Django fix-up would make it load a Django project, which a Tasklane worker never needs.
    for name in ("PGDATABASE", "DJANGO_SETTINGS_MODULE"):
        os.environ.pop(name, None)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = stack.enter_context(broker_url(console))
        smtp = stack.enter_context(SmtpSink())
        hooks = stack.enter_context(WebhookSink())
        say(console, f"SMTP sink: 127.0.0.1:{smtp.port}   DingTalk stand-in: {hooks.url}")
        worker_env = {
            "TASKLANE_BROKER_URL": url,
            "TASKLANE_NAMESPACE": NAMESPACE,
            "TASKLANE_LOG_FORMAT": "text",
            "TASKLANE_NOTIFIER_SMTP_PORT": str(smtp.port),
            "TASKLANE_NOTIFIER_WEBHOOK_ALLOW": "127.0.0.1/32",  # the local DingTalk stand-in
            "TASKLANE_NOTIFIER_DEFAULT_SENDER": "shop@example.org",
            "TASKLANE_NOTIFIER_SECRETS": json.dumps({ROBOT_SECRET_REF: ROBOT_SECRET}),
        }
        with console.status("starting the notifier worker…"):
            stack.enter_context(service_worker("notifier", worker_env, workdir / "worker.log"))
        say(console, "notifier worker: ready")
        setup_django(
            console,
            {
                "DJANGO_SETTINGS_MODULE": "quickstart.settings",
                "QUICKSTART_SQLITE": str(workdir / "db.sqlite3"),
                "TASKLANE_BROKER_URL": url,
                "TASKLANE_NAMESPACE": NAMESPACE,
                "DINGTALK_ROBOT_URL": f"{hooks.url}/robot/send?access_token={ACCESS_TOKEN}",
            },
        )

        answer = post_orders(console)
        task_ids = list(answer["tasks"].values())
        rows = show_outbox(console, "outbox, before any relay runs (the broker is never asked):")
        if [row.state for row in rows] != ["pending", "pending"]:
            raise DemoFailed("the order's two outbox rows are not pending")

        relay_log = workdir / "relay.log"
        relay_process = stack.enter_context(relay(relay_log))
        say(console, "relay: python manage.py tasklane_relay started (polling SQLite)")
        wait_until(
            lambda: all(row.state == "sent" for row in outbox_rows()),
            "the relay to send both rows",
        )
        show_outbox(console, "outbox, after the relay ran:")
        show_admin(console, task_ids)

        mail = smtp.wait_for(1, timeout=60)[0].message
        body = mail.get_body(("plain",))
        say(console, "SMTP sink received:")
        for header in ("From", "To", "Subject", "Message-ID"):
            say(console, f"  {header}: {mail[header]}")
        say(console, "  " + (body.get_content().strip() if body else "").replace("\n", "\n  "))

        request = hooks.wait_for(1, timeout=60)[0]
        check_robot_request(request)
        say(console, "DingTalk stand-in received:")
        say(console, f"  POST {request.path}?access_token=…&timestamp=…&sign=…")
        say(console, f"  {request.body.decode()}")
        say(console, "  DingTalk signature verified (HMAC-SHA256 of timestamp and secret)")

        relay_process.send_signal(signal.SIGTERM)
        status = relay_process.wait(30)
        say(console, f"relay stopped on SIGTERM: exit {status}")
        if status != 0:
            raise DemoFailed(f"the relay exited {status}:\n{relay_log.read_text()}")
    say(console, "demo finished: everything shut down")
    return 0


def main() -> None:
    """Entry point of ``python examples/django_quickstart/demo.py``."""
    try:
        status = run()
    except DemoFailed as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        status = 1
    sys.exit(status)


if __name__ == "__main__":
    main()
