"""publish_on_commit with the outbox on: the row is written in the caller's transaction, on
PostgreSQL and SQLite, holds the whole encoded message, and on PostgreSQL a NOTIFY follows the
commit (and only a commit)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import psycopg
import pytest
from django.db import connections, transaction
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from tasklane.contracts import SEND_EMAIL, EmailPayload
from tasklane.contrib.django import publish_on_commit
from tasklane.contrib.django.models import OutboxMessage
from tasklane.contrib.django.outbox import CHANNEL
from tasklane.errors import PayloadValidationError
from tasklane.wire.protocol import TaskMessage
from tasklane_dev.sinks import free_port

pytestmark = pytest.mark.integration

EMAIL = {"to": ["ada@example.com"], "subject": "Order 12", "text": "through the outbox"}


class Rollback(Exception):
    """Raised inside an atomic block to leave it by an exception."""


@pytest.fixture(params=["default", "sqlite"])
def outbox_on(request: pytest.FixtureRequest, tasklane_setting: Callable[..., None]) -> str:
    """The outbox on, in PostgreSQL (``default``) or SQLite; no broker is ever reached."""
    alias: str = request.param
    tasklane_setting(
        BROKER_URL=f"redis://127.0.0.1:{free_port()}/0", OUTBOX=True, OUTBOX_DATABASE=alias
    )
    return alias


def current_txid(alias: str) -> int | None:
    if connections[alias].vendor != "postgresql":
        return None
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_current_xact_id()::text::bigint")
        return int(cursor.fetchone()[0])


def test_the_row_is_written_in_the_callers_transaction(
    outbox_on: str, committed_rows: Callable[[str, str], int]
) -> None:
    alias = outbox_on
    rows = OutboxMessage.objects.using(alias)
    with transaction.atomic(using=alias):
        rolled_back = publish_on_commit(SEND_EMAIL, EMAIL, using=alias)
        assert rows.filter(task_id=rolled_back).exists()  # in this transaction
        assert committed_rows(alias, rolled_back) == 0  # and not outside it yet
        transaction.set_rollback(True, using=alias)
    assert not rows.filter(task_id=rolled_back).exists()

    with pytest.raises(Rollback), transaction.atomic(using=alias):
        left_by_exception = publish_on_commit(SEND_EMAIL, EMAIL)
        raise Rollback
    assert not rows.filter(task_id=left_by_exception).exists()

    with transaction.atomic(using=alias):
        kept = publish_on_commit(SEND_EMAIL, EMAIL)
        txid = current_txid(alias)
    assert committed_rows(alias, kept) == 1
    row = rows.get(task_id=kept)
    assert (row.contract, row.state, row.attempts, row.last_error, row.sent_at) == (
        SEND_EMAIL.name,
        "pending",
        0,
        "",
        None,
    )
    assert row.txid == txid  # PostgreSQL: the writing transaction's id; SQLite: none
    assert rows.count() == 1


def test_outside_a_transaction_the_row_is_committed_at_once(
    outbox_on: str, committed_rows: Callable[[str, str], int]
) -> None:
    task_id = publish_on_commit(SEND_EMAIL, EMAIL)
    assert committed_rows(outbox_on, task_id) == 1


def test_the_row_carries_the_whole_encoded_message(outbox_on: str) -> None:
    trace_id, span_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
    caller = NonRecordingSpan(SpanContext(trace_id, span_id, False, TraceFlags(TraceFlags.SAMPLED)))
    with trace.use_span(caller):
        task_id = publish_on_commit(SEND_EMAIL, EMAIL, headers={"x-order": "12"}, priority=7)
    message = TaskMessage.from_json(
        OutboxMessage.objects.using(outbox_on).get(task_id=task_id).message
    )

    assert message.task_id == message.headers["id"] == task_id
    assert message.headers["task"] == SEND_EMAIL.name
    assert message.headers["x-order"] == "12"
    assert message.headers["traceparent"].split("-")[1] == f"{trace_id:032x}"
    assert message.properties["correlation_id"] == task_id
    assert message.properties["priority"] == 9 - 7  # Redis serves priorities in reverse
    _, kwargs, _ = json.loads(message.body)
    assert kwargs["subject"] == "Order 12"
    assert kwargs["idempotency_key"] == task_id  # left empty: a resend is deduplicated


def test_an_idempotency_key_given_is_kept(outbox_on: str) -> None:
    rows = OutboxMessage.objects.using(outbox_on)
    given = publish_on_commit(SEND_EMAIL, {**EMAIL, "idempotency_key": "order-12"})
    from_model = publish_on_commit(SEND_EMAIL, EmailPayload.model_validate(EMAIL), task_id="t-1")

    def key(task_id: str) -> str:
        _, kwargs, _ = json.loads(TaskMessage.from_json(rows.get(task_id=task_id).message).body)
        return str(kwargs["idempotency_key"])

    assert key(given) == "order-12"
    assert (from_model, key(from_model)) == ("t-1", "t-1")


def test_a_bad_payload_or_another_database_writes_nothing(outbox_on: str) -> None:
    other = "sqlite" if outbox_on == "default" else "default"
    with pytest.raises(PayloadValidationError, match="subject"):
        publish_on_commit(SEND_EMAIL, {"to": ["ada@example.com"], "text": "no subject"})
    with pytest.raises(ValueError, match="OUTBOX_DATABASE"):
        publish_on_commit(SEND_EMAIL, EMAIL, using=other)
    assert OutboxMessage.objects.using(outbox_on).count() == 0
    assert OutboxMessage.objects.using(other).count() == 0


def notifications_until(listener: psycopg.Connection[tuple[object, ...]], last: str) -> list[str]:
    """The payloads ``listener`` receives up to and including ``last``, in order."""
    payloads: list[str] = []
    deadline = time.monotonic() + 20
    while last not in payloads:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no notification {last!r} in 20 s; received {payloads}")
        payloads.extend(n.payload for n in listener.notifies(timeout=remaining, stop_after=1))
    return payloads


def test_a_notify_is_delivered_only_after_commit(
    tasklane_setting: Callable[..., None], postgres_dsn: str
) -> None:
    tasklane_setting(BROKER_URL=f"redis://127.0.0.1:{free_port()}/0", OUTBOX=True)
    with (
        psycopg.connect(postgres_dsn, autocommit=True) as listener,
        psycopg.connect(postgres_dsn, autocommit=True) as other,
    ):
        listener.execute(f"LISTEN {CHANNEL}")
        # Notifications arrive in commit order: a marker committed by another connection while
        # the publishing transaction is open arrives first, and alone, unless the NOTIFY left
        # before the commit.
        with transaction.atomic():
            publish_on_commit(SEND_EMAIL, EMAIL)
            other.execute("SELECT pg_notify(%s, 'marker-open')", [CHANNEL])
            assert notifications_until(listener, "marker-open") == ["marker-open"]
        assert notifications_until(listener, SEND_EMAIL.name) == [SEND_EMAIL.name]

        with transaction.atomic():
            publish_on_commit(SEND_EMAIL, EMAIL)
            transaction.set_rollback(True)
        other.execute("SELECT pg_notify(%s, 'marker-rolled-back')", [CHANNEL])
        assert notifications_until(listener, "marker-rolled-back") == ["marker-rolled-back"]
