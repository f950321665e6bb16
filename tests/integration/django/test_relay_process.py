"""``manage.py tasklane_relay`` as a process of its own: kill -9 in the middle of a batch, SIGTERM,
and its metrics and probes as Prometheus and Kubernetes read them."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tasklane_dev.sinks import SmtpSink, free_port
from tests.integration.django.conftest import ADMIN_DSN
from tests.integration.django.relay_support import (
    EMAIL,
    RelayProcess,
    all_sent,
    configure,
    states,
    worker_runs,
    write_emails,
)
from tests.integration.django.relayproject import hooks
from tests.support import eventually
from tests.support.faults import TcpProxy
from tests.support.harness import BrokerEnv, RedisServer, WorkerProcess, cleanup

pytestmark = pytest.mark.integration

REDIS_ONLY = pytest.mark.parametrize("broker", ["redis"], indirect=True)


def _hook_directory(path: Path) -> Path:
    path.mkdir()
    hooks.prepare(path)
    return path


@REDIS_ONLY
def test_a_relay_killed_in_the_middle_of_a_batch_loses_nothing_and_duplicates_nothing(
    broker: BrokerEnv,
    django_project: str,
    tasklane_setting: Callable[..., None],
    start_worker: Callable[..., WorkerProcess],
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    configure(tasklane_setting, broker)
    subjects = [f"order {i}" for i in range(20)]
    ids = write_emails(subjects)
    worker = start_worker()
    first_hook = _hook_directory(tmp_path / "first")
    first = RelayProcess(
        django_project,
        broker,
        tmp_path / "first.log",
        "--batch-size",
        "5",
        env={"RELAYPROJECT_HOOK": str(first_hook), "RELAYPROJECT_STALL": "1"},
    )
    try:
        stalled = eventually(
            lambda: hooks.stalled_ids(first_hook),
            timeout=60,
            message=lambda: f"the first batch sent:\n{first.output()}",
        )
        # The first batch: five rows unless a transaction of another test held some back.
        assert stalled == ids[: len(stalled)]
        smtp_sink.wait_for(len(stalled), timeout=60)  # the broker had them: the worker ran them
        first.kill()
    finally:
        first.stop()
    assert set(states(ids).values()) == {"pending"}  # killed before the batch was marked

    second_hook = tmp_path / "second"
    second_hook.mkdir()
    second = RelayProcess(
        django_project,
        broker,
        tmp_path / "second.log",
        "--batch-size",
        "5",
        env={"RELAYPROJECT_HOOK": str(second_hook)},
    )
    try:
        eventually(
            lambda: all_sent(ids),
            timeout=60,
            message=lambda: f"every row sent by the second relay:\n{second.output()}",
        )
    finally:
        second.stop()
    sends = Counter(hooks.sent_ids(first_hook) + hooks.sent_ids(second_hook))
    assert sends == Counter(ids + stalled)  # the killed batch was sent again, the rest once
    # Every send ran (the resent five as duplicates the worker recognised), and only then is
    # the sink's count final.
    runs = len(ids) + len(stalled)
    eventually(
        lambda: len(worker_runs(worker.output())) >= runs,
        timeout=60,
        message=lambda: f"{runs} runs in the worker's log:\n{worker.output()[-3000:]}",
    )
    delivered = smtp_sink.messages
    assert sorted(mail.message["Subject"] for mail in delivered) == sorted(subjects)
    assert len({mail.message["Message-ID"] for mail in delivered}) == 20


@REDIS_ONLY
def test_sigterm_lets_the_relay_finish_its_batch_and_exit_0(
    broker: BrokerEnv,
    django_project: str,
    tasklane_setting: Callable[..., None],
    tmp_path: Path,
) -> None:
    configure(tasklane_setting, broker)
    ids = write_emails([f"order {i}" for i in range(15)])
    hook = _hook_directory(tmp_path / "hook")
    relay = RelayProcess(
        django_project,
        broker,
        tmp_path / "relay.log",
        "--batch-size",
        "5",
        env={"RELAYPROJECT_HOOK": str(hook), "RELAYPROJECT_STALL": "1"},
    )
    try:
        stalled = eventually(
            lambda: hooks.stalled_ids(hook),
            timeout=60,
            message=lambda: f"the first batch sent:\n{relay.output()}",
        )
        relay.terminate()  # while the batch is sent and not yet marked
        hooks.release(hook)
        assert relay.process.wait(60) == 0, relay.output()
    finally:
        relay.stop()
    assert stalled == ids[: len(stalled)]
    assert states(ids) == {
        task_id: "sent" if task_id in stalled else "pending" for task_id in ids
    }  # the batch in hand finished, no other started
    assert hooks.sent_ids(hook) == stalled
    assert "relay stopped" in relay.output()


@REDIS_ONLY
def test_once_sends_what_it_can_and_fails_loudly_without_a_broker(
    broker: BrokerEnv, tasklane_setting: Callable[..., None]
) -> None:
    from io import StringIO

    from django.core.management import CommandError, call_command

    configure(tasklane_setting, broker)
    ids = write_emails(["once 1", "once 2", "once 3"])
    out = StringIO()
    # A transaction of another test, open anywhere on the server, may hold the rows back a while.
    call_command("tasklane_relay", "--once", "--wait", "60", "--batch-size", "2", stdout=out)
    assert "3 outbox rows sent" in out.getvalue()
    assert all_sent(ids)

    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    configure(tasklane_setting, broker, BROKER_URL=nowhere, PUBLISH_TIMEOUT=0.5)
    (waiting,) = write_emails(["no broker"])
    with pytest.raises(CommandError, match="outbox rows not sent: broker .* unavailable"):
        call_command("tasklane_relay", "--once", stdout=StringIO())
    assert states([waiting]) == {waiting: "pending"}


@REDIS_ONLY
def test_once_waits_for_rows_an_open_transaction_holds_back_and_says_what_it_left(
    broker: BrokerEnv, tasklane_setting: Callable[..., None]
) -> None:
    from io import StringIO

    import psycopg
    from django.core.management import call_command
    from django.db import connection

    configure(tasklane_setting, broker)
    # A transaction that has a txid and stays open, in another database of the same server:
    # every row written after it began is held back until it ends (commit order).
    blocker = psycopg.connect(ADMIN_DSN)
    try:
        blocker.execute("SELECT txid_current()")
        ids = write_emails(["held 1", "held 2", "held 3"])

        out = StringIO()
        call_command("tasklane_relay", "--once", "--wait", "0", stdout=out)
        assert out.getvalue().strip() == (
            "0 outbox rows sent; 3 still pending (held back by a transaction still open on "
            "the database server, or written since)"
        )
        assert set(states(ids).values()) == {"pending"}

        claimed = threading.Event()
        waited = StringIO()

        def watch_claims(execute: Callable[..., Any], sql: str, *args: Any) -> Any:
            answer = execute(sql, *args)
            if "pg_snapshot_xmin" in sql:
                claimed.set()  # a claim ran, and the open transaction held its rows back
            return answer

        def once() -> None:
            try:
                with connection.execute_wrapper(watch_claims):
                    call_command("tasklane_relay", "--once", "--wait", "60", stdout=waited)
            finally:
                connection.close()

        thread = threading.Thread(target=once)
        thread.start()
        try:
            assert claimed.wait(60), "the relay never tried to claim the rows"
        finally:
            blocker.rollback()  # the rows' turn
            thread.join(90)
        assert not thread.is_alive()
        assert waited.getvalue().strip() == "3 outbox rows sent"
        assert all_sent(ids)
    finally:
        blocker.close()


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(port: int, name: str, **labels: str) -> float | None:
    return _scrape(port).get((name, tuple(sorted(labels.items()))))


def _probe(port: int, path: str) -> tuple[int, str]:
    answer = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    return answer.status_code, answer.text


def test_metrics_and_probes_follow_the_backlog_sends_and_outages(
    django_project: str,
    tasklane_setting: Callable[..., None],
    redis_url: str,
    tmp_path: Path,
) -> None:
    from django.utils import timezone

    from tasklane.contrib.django.models import OutboxMessage

    server = RedisServer(tmp_path).start()
    broker = BrokerEnv("redis", server.url, redis_url, f"t{uuid.uuid4().hex[:10]}.")
    configure(tasklane_setting, broker)
    # Sent eight days ago, past the default retention of seven: pruned when the relay starts.
    (old,) = write_emails(["sent long ago"])
    long_ago = timezone.now() - timedelta(days=8)
    OutboxMessage.objects.filter(task_id=old).update(
        state="sent", sent_at=long_ago, created_at=long_ago
    )
    port = free_port()
    database = TcpProxy("127.0.0.1", 5432)
    database.restore()
    relay = RelayProcess(
        django_project,
        broker,
        tmp_path / "relay.log",
        "--metrics-port",
        str(port),
        env={
            "RELAYPROJECT_DATABASE_PORT": str(database.port),
            "RELAYPROJECT_POLL_INTERVAL": "0.2",
            "TASKLANE_PUBLISH_TIMEOUT": "1",
        },
    )
    ignoring = (httpx.TransportError,)
    try:
        relay.wait_started()
        eventually(
            lambda: _probe(port, "/readyz")[0] == 200,
            timeout=30,
            ignoring=ignoring,
            message=lambda: f"the relay ready:\n{relay.output()}",
        )
        assert _probe(port, "/livez")[0] == 200
        eventually(lambda: states([old]) == {}, timeout=30, message="the old sent row pruned")

        def metric(name: str, **labels: str) -> float | None:
            return _value(port, name, **labels)

        sent = write_emails(["first", "second"])
        eventually(
            lambda: (
                metric("tasklane_outbox_sent_total", contract=EMAIL) == 2
                and metric("tasklane_outbox_relay_lag_seconds_count") == 2
                and metric("tasklane_outbox_pending_rows", contract=EMAIL) == 0
            ),
            timeout=30,
            message=lambda: (
                f"two rows counted sent:\n{relay.output()}\n{_scrape(port)}\n{states(sent)}"
            ),
        )
        assert all_sent(sent)
        assert metric("tasklane_outbox_oldest_pending_age_seconds") == 0

        server.kill()
        waiting = write_emails(["third", "fourth", "fifth"])
        eventually(
            lambda: (
                metric("tasklane_outbox_pending_rows", contract=EMAIL) == 3
                and (metric("tasklane_outbox_oldest_pending_age_seconds") or 0) > 0
                and (metric("tasklane_outbox_relay_errors_total", reason="broker-unavailable") or 0)
                >= 1
            ),
            timeout=30,
            message=lambda: f"three rows pending through the outage:\n{relay.output()}",
        )
        assert _probe(port, "/livez")[0] == 200  # backing off is not hanging
        assert _probe(port, "/readyz")[0] == 200  # the database still answers

        server.start()
        eventually(
            lambda: (
                metric("tasklane_outbox_sent_total", contract=EMAIL) == 5
                and metric("tasklane_outbox_relay_lag_seconds_count") == 5
                and metric("tasklane_outbox_pending_rows", contract=EMAIL) == 0
                and metric("tasklane_outbox_oldest_pending_age_seconds") == 0
            ),
            timeout=90,
            message=lambda: f"five rows counted sent:\n{relay.output()}",
        )
        assert all_sent(waiting)

        database.cut()

        def not_ready() -> str | None:
            status, why = _probe(port, "/readyz")
            return why if status == 503 else None

        why = eventually(
            not_ready,
            timeout=30,
            message=lambda: f"/readyz failing without the database:\n{relay.output()}",
        )
        assert "unreachable" in why
        assert _probe(port, "/livez")[0] == 200
        assert (metric("tasklane_outbox_relay_errors_total", reason="database") or 0) >= 1
        database.restore()
        eventually(
            lambda: _probe(port, "/readyz")[0] == 200,
            timeout=60,
            message=lambda: f"/readyz passing with the database back:\n{relay.output()}",
        )
        relay.terminate()
        assert relay.process.wait(60) == 0, relay.output()
    finally:
        relay.stop()
        database.cut()
        server.kill()
        cleanup(BrokerEnv("redis", redis_url, redis_url, broker.namespace))


def test_liveness_fails_once_the_loop_has_not_beaten_within_the_timeout() -> None:
    from tasklane.contrib.django.relay_metrics import RelayHealth

    stalled = RelayHealth(live_timeout=-1.0)  # any age is past a negative timeout
    assert stalled.live()[0] is False
    assert "stalled" in stalled.live()[1]
    healthy = RelayHealth()
    assert healthy.live()[0] is True
    assert healthy.ready() == (False, "starting: the outbox database not reached yet")
    healthy.database(True, "outbox database reachable")
    assert healthy.ready() == (True, "outbox database reachable")
