"""``make demo-django``: the quick start end to end, on an embedded broker and SQLite.

It starts a real notifier worker, ``tasklane beat`` and ``tasklane flower`` beside it, an SMTP
sink and a webhook sink standing in for DingTalk, migrates a fresh SQLite database, posts an
order to ``POST /orders/`` (Django's test client), shows its two outbox rows pending, starts
``manage.py tasklane_relay``, shows them sent, and checks what arrived: the confirmation email,
and the robot message with its DingTalk signature verified. Then it adds a one-off schedule in
the admin, sees Beat's firing reach the stand-in, prints the entry's run history and what Flower
shows. It stops everything; the exit status is 0 when every step did what it should.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from demo_support import Background, DemoFailed, Flower, beat, wait_until
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
# The one-off schedule added in the admin: Beat fires it this many seconds after it is added.
SCHEDULE = "orders-to-ship"
SCHEDULE_DELAY = 3
UNFINISHED = ("pending", "started", "retrying")


def say(console: Console, text: str) -> None:
    console.print(text, markup=False, highlight=False)


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


def relay(log: Path) -> Background:
    """``python manage.py tasklane_relay`` of the quick start; ready once it relays."""
    return Background(
        "the relay", [sys.executable, "manage.py", "tasklane_relay"], log,
        lambda text: "relaying outbox rows" in text, cwd=HERE,
    )  # fmt: skip


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


def admin_client() -> Any:
    """Django's test client, logged in as a new superuser of the admin."""
    from django.contrib.auth.models import User
    from django.test import Client

    client = Client(HTTP_HOST="localhost")
    client.force_login(User.objects.create_superuser("admin", "admin@example.org", None))
    return client


def show_admin(console: Console, client: Any, task_ids: list[str]) -> None:
    """The outbox as the admin lists it (Tasklane → Outbox messages)."""
    page = client.get("/admin/tasklane/outboxmessage/")
    listed = page.status_code == 200 and all(task_id in page.text for task_id in task_ids)
    say(console, f"admin /admin/tasklane/outboxmessage/ -> {page.status_code}, lists both rows")
    if not listed:
        raise DemoFailed("the admin does not list the outbox rows")


def show_robot_message(console: Console, request: ReceivedRequest, heading: str) -> None:
    check_robot_request(request)
    say(console, heading)
    say(console, f"  POST {request.path}?access_token=…&timestamp=…&sign=…")
    say(console, f"  {request.body.decode()}")
    say(console, "  DingTalk signature verified (HMAC-SHA256 of timestamp and secret)")


def show_flower_sees_worker(console: Console, flower: Flower, worker_log: Path) -> str:
    """Wait until Flower lists the worker and has turned its task events on; its name."""
    workers = wait_until(
        lambda: {k: v for k, v in flower.workers().items() if k.startswith("notifier@")},
        "Flower to list the notifier worker",
    )
    name, info = next(iter(workers.items()))
    queues = ", ".join(sorted(queue["name"] for queue in info.get("active_queues") or []))
    say(console, f"flower: {flower.url} (basic auth {flower.auth[0]}:…), running")
    say(console, f"  /api/workers: {name}, queues {queues}")
    # Workers start without task events (for throughput); Flower turns them on by remote control.
    wait_until(
        lambda: "enabled by remote" in worker_log.read_text(errors="replace"),
        "Flower to turn the worker's task events on",
    )
    say(console, f"  {name}: task events enabled by Flower")
    return str(name)


def add_schedule_in_admin(console: Console, client: Any, robot_url: str) -> datetime:
    """A one-off entry a few seconds ahead, added through the admin's form; its time."""
    at = (datetime.now(UTC) + timedelta(seconds=SCHEDULE_DELAY)).replace(microsecond=0)
    payload = {
        "channel": "dingtalk",
        "url": robot_url,
        "secret_ref": ROBOT_SECRET_REF,
        "title": "Orders to ship",
        "text": "#### Orders to ship\n- order 1: 2 x Blue kettle",
    }
    form = {
        "name": SCHEDULE,
        "task": "notifier.im.send",
        "payload": json.dumps(payload),
        "description": "Tell the shop's group what to ship.",
        "enabled": "on",
        "kind": "clocked",
        "timezone": "UTC",
        "at": at.isoformat(),
        **dict.fromkeys(("minute", "hour", "day_of_month", "month_of_year", "day_of_week"), "*"),
        **dict.fromkeys(("every", "start_at", "expires_at", "priority", "expires_after"), ""),
    }
    response = client.post("/admin/tasklane/schedule/add/", form)
    say(
        console,
        f"admin: add schedule {SCHEDULE!r}, notifier.im.send once at {at:%H:%M:%S} UTC"
        f" -> {response.status_code}",
    )
    if response.status_code != 302:
        raise DemoFailed(f"the admin did not add the schedule:\n{response.content.decode()}")
    from tasklane.contrib.django.schedules.service import schedules

    (record,) = schedules().audit(SCHEDULE)
    say(console, f"  audit trail: {record.action} by {record.actor}")
    return at


def show_history(console: Console, beat_log: Path) -> str:
    """Wait until the firing's task succeeded; print the run history; the task id."""
    from tasklane.contrib.django.schedules.service import schedules

    manager = schedules()
    history = wait_until(
        lambda: [o for o in manager.history(SCHEDULE) if o.status not in UNFINISHED],
        "the worker to finish Beat's firing",
    )
    published = [line for line in beat_log.read_text().splitlines() if "published" in line]
    say(console, f"beat log: {published[-1].split('] ', 1)[-1] if published else '(nothing)'}")
    say(console, f"run history of {SCHEDULE!r} (Schedules.history):")
    for outcome in history:
        firing = outcome.firing
        slot = f"slot {firing.slot:%H:%M:%S}" if firing.slot else "run now"
        say(
            console,
            f"  fired {firing.fired_at:%H:%M:%S.%f} {slot}  task {firing.task_id}  "
            f"{outcome.status}",
        )
    view = manager.show(SCHEDULE)
    say(
        console,
        f"  runs {view.state.total_run_count}, enabled {view.entry.enabled} (a one-off disables "
        "itself once fired), next run "
        f"{view.next_run_at or 'none'}",
    )
    if [o.status for o in history] != ["succeeded"] or view.state.total_run_count != 1:
        raise DemoFailed(f"the one-off ran {view.state.total_run_count} times, not once")
    return str(history[0].firing.task_id)


def show_flower_tasks(console: Console, flower: Flower, worker: str, task_ids: list[str]) -> None:
    """Wait until Flower has every task as succeeded on the worker (from its task events)."""

    def seen() -> dict[str, Any] | None:
        tasks = flower.tasks()
        done = {i: tasks[i] for i in task_ids if tasks.get(i, {}).get("state") == "SUCCESS"}
        return done if len(done) == len(task_ids) else None

    tasks = wait_until(seen, "Flower to show every task succeeded")
    say(console, "flower /api/tasks (from the worker's task events):")
    for task_id, info in tasks.items():
        say(
            console,
            f"  {task_id}  {info['name']:<20} {info['state']}  on {info['worker']}"
            f"  runtime {info['runtime']:.3f} s",
        )
    if any(info["worker"] != worker for info in tasks.values()):
        raise DemoFailed("Flower shows a task on another worker")


def stop_all(
    console: Console,
    relay_process: Background,
    beat_process: Background,
    flower_process: Background,
) -> None:
    """SIGTERM to the relay, Beat and Flower at once; each must exit 0, Beat withdrawn."""
    from tasklane.contrib.django.schedules.service import schedules

    processes = {"relay": relay_process, "beat": beat_process, "flower": flower_process}
    for process in processes.values():
        process.terminate()
    for name, process in processes.items():
        status = process.stop()
        left = f", {len(schedules().beats())} Beat left in Redis" if name == "beat" else ""
        say(console, f"{name} stopped on SIGTERM: exit {status}{left}")
        if status != 0:
            raise DemoFailed(f"{name} exited {status}:\n{process.output()}")
    if schedules().beats():
        raise DemoFailed(f"Beat left its status in Redis:\n{beat_process.output()}")


def run() -> int:
    """Run the demo; returns the exit status."""
    console = Console(soft_wrap=True)
    # SQLite, whatever the shell says. And no DJANGO_SETTINGS_MODULE for the worker, Beat and
    # Flower: Celery's Django fix-up would make them load a Django project, which they never need.
    for name in ("PGDATABASE", "DJANGO_SETTINGS_MODULE"):
        os.environ.pop(name, None)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = stack.enter_context(broker_url(console))
        smtp = stack.enter_context(SmtpSink())
        hooks = stack.enter_context(WebhookSink())
        robot_url = f"{hooks.url}/robot/send?access_token={ACCESS_TOKEN}"
        say(console, f"SMTP sink: 127.0.0.1:{smtp.port}   DingTalk stand-in: {hooks.url}")
        # The broker is also the result backend and Beat's store (the state Redis).
        fleet_env = {
            "TASKLANE_BROKER_URL": url,
            "TASKLANE_NAMESPACE": NAMESPACE,
            "TASKLANE_LOG_FORMAT": "text",
        }
        worker_env = {
            **fleet_env,
            "TASKLANE_NOTIFIER_SMTP_PORT": str(smtp.port),
            "TASKLANE_NOTIFIER_WEBHOOK_ALLOW": "127.0.0.1/32",  # the local DingTalk stand-in
            "TASKLANE_NOTIFIER_DEFAULT_SENDER": "shop@example.org",
            "TASKLANE_NOTIFIER_SECRETS": json.dumps({ROBOT_SECRET_REF: ROBOT_SECRET}),
        }
        # Beat and Flower start first, and get ready while the worker starts and Django migrates
        # (each Python process takes seconds to start). All three are started before
        # setup_django puts DJANGO_SETTINGS_MODULE in this process's environment.
        beat_process = stack.enter_context(beat(fleet_env, workdir / "beat.log"))
        flower = Flower(fleet_env, workdir / "flower.log")
        stack.enter_context(flower.process)
        worker_log = workdir / "worker.log"
        with console.status("starting the notifier worker, Beat and Flower…"):
            stack.enter_context(service_worker("notifier", worker_env, worker_log))
            say(console, "notifier worker: ready")
            setup_django(
                console,
                {
                    "DJANGO_SETTINGS_MODULE": "quickstart.settings",
                    "QUICKSTART_SQLITE": str(workdir / "db.sqlite3"),
                    "TASKLANE_BROKER_URL": url,
                    "TASKLANE_NAMESPACE": NAMESPACE,
                    "DINGTALK_ROBOT_URL": robot_url,
                },
            )
            stack.callback(close_schedules)
            beat_process.wait_ready()
            say(console, "beat: tasklane beat running, the active Beat (holds the lock)")
            flower.process.wait_ready()
            worker_name = show_flower_sees_worker(console, flower, worker_log)

        answer = post_orders(console)
        task_ids = list(answer["tasks"].values())
        rows = show_outbox(console, "outbox, before any relay runs (the broker is never asked):")
        if [row.state for row in rows] != ["pending", "pending"]:
            raise DemoFailed("the order's two outbox rows are not pending")

        relay_process = stack.enter_context(relay(workdir / "relay.log"))
        relay_process.wait_ready()
        say(console, "relay: python manage.py tasklane_relay started (polling SQLite)")
        wait_until(
            lambda: all(row.state == "sent" for row in outbox_rows()),
            "the relay to send both rows",
        )
        show_outbox(console, "outbox, after the relay ran:")
        admin = admin_client()
        show_admin(console, admin, task_ids)

        mail = smtp.wait_for(1, timeout=60)[0].message
        body = mail.get_body(("plain",))
        say(console, "SMTP sink received:")
        for header in ("From", "To", "Subject", "Message-ID"):
            say(console, f"  {header}: {mail[header]}")
        say(console, "  " + (body.get_content().strip() if body else "").replace("\n", "\n  "))

        request = hooks.wait_for(1, timeout=60)[0]
        show_robot_message(console, request, "DingTalk stand-in received:")

        at = add_schedule_in_admin(console, admin, robot_url)
        # The sink is the truth: Beat's firing counts once the notifier delivered it there.
        fired = hooks.wait_for(2, timeout=60 + SCHEDULE_DELAY)[1]
        late = time.time() - (time.monotonic() - fired.received_at) - at.timestamp()
        show_robot_message(
            console, fired, f"DingTalk stand-in received from Beat's firing ({late:.1f} s after):"
        )
        task_ids.append(show_history(console, beat_process.log))
        show_flower_tasks(console, flower, worker_name, task_ids)
        stop_all(console, relay_process, beat_process, flower.process)
    say(console, "demo finished: everything shut down")
    return 0


def close_schedules() -> None:
    from tasklane.contrib.django.schedules.service import close

    close()


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
