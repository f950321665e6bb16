"""The outbox relay in this process against real PostgreSQL, brokers and a notifier worker: order,
commit order, outages, two relays, NOTIFY, parking and pruning."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tasklane_dev.sinks import SmtpSink
from tests.integration.django.relay_support import (
    EMAIL,
    RecordingPublisher,
    SendLog,
    all_sent,
    configure,
    email,
    outbox_rows,
    relay_until,
    running,
    states,
    write_emails,
)
from tests.support import eventually
from tests.support.faults import TcpProxy
from tests.support.harness import (
    RABBITMQ_URL,
    BrokerEnv,
    RedisServer,
    WorkerProcess,
    cleanup,
    rabbitmq_reachable,
)

pytestmark = pytest.mark.integration

REDIS_ONLY = pytest.mark.parametrize("broker", ["redis"], indirect=True)
IM = "notifier.im.send"


@pytest.fixture
def recording(broker: BrokerEnv) -> Iterator[Callable[..., RecordingPublisher]]:
    """Recording publishers on this test's broker, closed at the end."""
    made: list[RecordingPublisher] = []

    def make(settings: Any = None, **options: Any) -> RecordingPublisher:
        publisher = RecordingPublisher(settings or broker.settings, **options)
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        publisher.close()


def test_rows_are_sent_in_commit_order_marked_sent_and_delivered(
    broker: BrokerEnv,
    tasklane_setting: Callable[..., None],
    recording: Callable[..., RecordingPublisher],
    start_worker: Callable[..., WorkerProcess],
    smtp_sink: SmtpSink,
) -> None:
    from django.db import transaction

    from tasklane.contrib.django import publish_on_commit
    from tasklane.contrib.django.relay import Relay

    configure(tasklane_setting, broker)
    ids = write_emails([f"one by one {i}" for i in range(4)])
    with transaction.atomic():  # three rows of one transaction: one txid, id order
        ids += [publish_on_commit(EMAIL, email(f"together {i}")) for i in range(3)]
    ids += write_emails(["last"])
    rows = outbox_rows()
    assert [row.task_id for row in rows] == ids
    assert all(row.state == "pending" and row.txid is not None for row in rows)
    assert rows[4].txid == rows[5].txid == rows[6].txid

    publisher = recording()
    relay = Relay(publisher=publisher, batch_size=3)
    relay_until(relay, lambda: all_sent(ids), "every row sent")

    assert publisher.task_ids == ids  # in txid, id order, each once
    assert all(len(batch) <= 3 for _, batch in publisher.sends)
    assert {contract for contract, _ in publisher.sends} == {EMAIL}
    assert all(row.sent_at is not None and row.attempts == 0 for row in outbox_rows())
    start_worker()
    delivered = smtp_sink.wait_for(len(ids), timeout=60)
    assert sorted(mail.message["Subject"] for mail in delivered) == sorted(
        [f"one by one {i}" for i in range(4)] + [f"together {i}" for i in range(3)] + ["last"]
    )


@REDIS_ONLY
def test_an_earlier_transaction_committing_later_is_not_overtaken(
    broker: BrokerEnv,
    tasklane_setting: Callable[..., None],
    recording: Callable[..., RecordingPublisher],
) -> None:
    from django.db import connections, transaction

    from tasklane.contrib.django import publish_on_commit
    from tasklane.contrib.django.relay import Relay

    configure(tasklane_setting, broker)
    written, release = threading.Event(), threading.Event()
    earlier: list[str] = []

    def earlier_transaction() -> None:
        try:
            with transaction.atomic():
                earlier.append(publish_on_commit(EMAIL, email("earlier")))
                written.set()
                release.wait(60)
        finally:
            connections.close_all()

    thread = threading.Thread(target=earlier_transaction)
    thread.start()
    try:
        assert written.wait(30)
        later = write_emails(["later, committed first"])
        publisher = recording()
        relay = Relay(publisher=publisher)
        assert relay.run_once() == 0
        assert relay.drain() == 0
        assert publisher.sends == []
        assert states(later) == {later[0]: "pending"}
    finally:
        release.set()
        thread.join(30)
    relay_until(relay, lambda: all_sent(earlier + later), "both rows sent")
    assert publisher.task_ids == earlier + later
    rows = outbox_rows()
    assert [row.task_id for row in rows] == earlier + later
    assert rows[0].txid < rows[1].txid


@pytest.fixture(params=["redis", "rabbitmq"])
def breakable_broker(
    request: pytest.FixtureRequest, redis_url: str, tmp_path: Path
) -> Iterator[tuple[BrokerEnv, BrokerEnv, Callable[[], object], Callable[[], object]]]:
    """(the relay's broker, the worker's, cut, restore): an own redis-server the relay and the
    worker share, killed and started again; or RabbitMQ behind a proxy only the relay uses."""
    namespace = f"t{uuid.uuid4().hex[:10]}."
    if request.param == "redis":
        server = RedisServer(tmp_path).start()
        env = BrokerEnv("redis", server.url, redis_url, namespace)
        try:
            yield env, env, server.kill, server.start
        finally:
            server.kill()
            cleanup(BrokerEnv("redis", redis_url, redis_url, namespace))
        return
    if not rabbitmq_reachable():
        pytest.skip(f"RabbitMQ does not answer at {RABBITMQ_URL}")
    with TcpProxy("127.0.0.1", 5672) as proxy:
        proxied = f"amqp://guest:guest@127.0.0.1:{proxy.port}//"
        direct = BrokerEnv("rabbitmq", RABBITMQ_URL, redis_url, namespace)
        try:
            yield (
                BrokerEnv("rabbitmq", proxied, redis_url, namespace),
                direct,
                proxy.cut,
                proxy.restore,
            )
        finally:
            cleanup(direct)


def test_a_broker_outage_keeps_rows_pending_and_each_is_delivered_once_after(
    breakable_broker: tuple[BrokerEnv, BrokerEnv, Callable[[], object], Callable[[], object]],
    tasklane_setting: Callable[..., None],
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    from tasklane.contrib.django.relay import Relay
    from tasklane.settings import Settings

    relay_broker, worker_broker, cut, restore = breakable_broker
    configure(tasklane_setting, relay_broker)
    worker = WorkerProcess(
        "notifier",
        {**worker_broker.env(), "TASKLANE_NOTIFIER_SMTP_PORT": str(smtp_sink.port)},
        tmp_path / "worker.log",
        2,
    )
    # A send gives up after 1 s of outage (the default is 5 s): the test sees failures sooner.
    settings = Settings(
        broker_url=relay_broker.broker_url,
        result_backend=relay_broker.result_backend,
        namespace=relay_broker.namespace,
        publish_timeout=1,
    )
    publisher = RecordingPublisher(settings)
    relay = Relay(publisher=publisher, batch_size=4)
    try:
        worker.wait_ready()
        with running(relay):
            before = write_emails(["before the outage"])
            smtp_sink.wait_for(1, timeout=30)
            cut()
            ids = write_emails([f"during the outage {i}" for i in range(10)])

            def retried() -> bool:
                rows = outbox_rows()[1:]
                first_batch = rows[:4]
                return all(row.state == "pending" for row in rows) and all(
                    row.attempts >= 2 and "unavailable" in row.last_error for row in first_batch
                )

            # Two failed attempts: the relay backed off and tried again, still running.
            eventually(retried, timeout=60, message="the first batch pending, tried twice")
            assert publisher.task_ids == before
            errors = relay.metrics.registry.get_sample_value(
                "tasklane_outbox_relay_errors_total", {"reason": "broker-unavailable"}
            )
            assert errors is not None and errors >= 2
            restore()
            eventually(lambda: all_sent(ids), timeout=90, message="every row sent after the outage")
            delivered = smtp_sink.wait_for(11, timeout=60)
    finally:
        publisher.close()
        worker.stop()
    assert Counter(publisher.task_ids) == Counter(before + ids)  # each sent once
    assert all(row.last_error for row in outbox_rows()[1:5])  # the failure stays on record
    assert len(smtp_sink.messages) == 11
    assert len({mail.message["Message-ID"] for mail in delivered}) == 11


@REDIS_ONLY
def test_two_relays_at_once_send_each_row_once_in_each_contracts_order(
    broker: BrokerEnv,
    tasklane_setting: Callable[..., None],
    recording: Callable[..., RecordingPublisher],
) -> None:
    from django.db import transaction

    from tasklane.contrib.django import publish_on_commit
    from tasklane.contrib.django.relay import Relay

    configure(tasklane_setting, broker)
    message = {"channel": "webhook", "url": "https://hooks.example.com/x", "text": "hi"}
    for i in range(60):
        with transaction.atomic():
            publish_on_commit(EMAIL, email(f"email {i}"))
            publish_on_commit(IM, message)
    order = {
        contract: [row.task_id for row in outbox_rows() if row.contract == contract]
        for contract in (EMAIL, IM)
    }
    log = SendLog()  # one order for both relays' sends
    first_publisher, second_publisher = recording(log=log), recording(log=log)
    first = Relay(publisher=first_publisher, batch_size=7)
    second = Relay(publisher=second_publisher, batch_size=7)

    # The first relay sends a batch and stalls before marking it: meanwhile the second may send
    # rows of the other contract, but none of this one (the rows after the batch would overtake).
    stalled, release = first_publisher.stall_next_send()
    with running(first):
        try:
            assert stalled.wait(60)
            (held,) = {contract for contract, _ in log.sends}
            second.run_once()
            assert held not in {contract for contract, _ in second_publisher.sends}
        finally:
            release.set()
        with running(second):
            eventually(
                lambda: all(row.state == "sent" for row in outbox_rows()),
                timeout=60,
                message="every row sent",
            )
    counts = Counter(log.task_ids())
    assert len(counts) == 120 and set(counts.values()) == {1}
    for contract, ids in order.items():
        assert log.task_ids(contract) == ids


@REDIS_ONLY
def test_a_notify_wakes_the_relay_long_before_its_poll_interval(
    broker: BrokerEnv,
    tasklane_setting: Callable[..., None],
    recording: Callable[..., RecordingPublisher],
) -> None:
    from tasklane.contrib.django.relay import Relay

    configure(tasklane_setting, broker, RELAY_POLL_INTERVAL=300)
    publisher = recording()
    relay = Relay(publisher=publisher)
    with running(relay):
        # Ready after its first pass, which found nothing: it now waits for up to 300 s.
        eventually(lambda: relay.health.ready()[0], timeout=30, message="the relay's first pass")
        ids = write_emails(["woken"])
        eventually(lambda: all_sent(ids), timeout=30, message="the row sent on its NOTIFY")
    assert publisher.task_ids == ids


@REDIS_ONLY
def test_on_sqlite_rows_are_sent_in_id_order_by_polling(
    broker: BrokerEnv,
    tasklane_setting: Callable[..., None],
    recording: Callable[..., RecordingPublisher],
) -> None:
    from tasklane.contrib.django.relay import Relay

    configure(tasklane_setting, broker, OUTBOX_DATABASE="sqlite", RELAY_POLL_INTERVAL=0.05)
    publisher = recording()
    relay = Relay(publisher=publisher, batch_size=2)
    assert relay.using == "sqlite"
    with running(relay):
        eventually(lambda: relay.health.ready()[0], timeout=30, message="the relay's first pass")
        ids = write_emails([f"on sqlite {i}" for i in range(5)], using="sqlite")
        eventually(
            lambda: all_sent(ids, using="sqlite"), timeout=30, message="the rows sent by a poll"
        )
    assert publisher.task_ids == ids
    assert [row.txid for row in outbox_rows("sqlite")] == [None] * 5
    assert outbox_rows() == []  # nothing in the PostgreSQL database


@REDIS_ONLY
def test_rows_that_can_never_be_sent_are_parked_with_why_and_block_nothing(
    broker: BrokerEnv,
    tasklane_setting: Callable[..., None],
    recording: Callable[..., RecordingPublisher],
) -> None:
    from django.db import transaction
    from django.db.models import BigIntegerField
    from django.db.models.expressions import RawSQL

    from tasklane.contrib.django.models import OutboxMessage
    from tasklane.contrib.django.relay import Relay

    configure(tasklane_setting, broker)
    publisher = recording()
    unknown = publisher.encode(EMAIL, email("for a newer registry")).to_json()
    unknown["headers"]["task"] = "billing.invoice.send"
    mislabelled = publisher.encode(EMAIL, email("for another task")).to_json()
    bad = {
        "billing.invoice.send": unknown,
        EMAIL: {"body": "no task id, no headers"},
    }
    txid = RawSQL("pg_current_xact_id()::text::bigint", (), output_field=BigIntegerField())
    with transaction.atomic():  # written before the good rows: earlier in the relay's order
        for contract, message in bad.items():
            OutboxMessage.objects.create(
                contract=contract, task_id=str(uuid.uuid4()), message=message, txid=txid
            )
        OutboxMessage.objects.create(
            contract=IM,
            task_id=mislabelled["task_id"],
            message=mislabelled,
            txid=txid,
        )
    good = write_emails([f"good {i}" for i in range(3)])

    relay = Relay(publisher=publisher)
    relay_until(relay, lambda: all_sent(good), "the good rows sent")
    assert publisher.task_ids == good
    parked = {row.contract: row.last_error for row in outbox_rows() if row.state == "parked"}
    assert parked.keys() == {"billing.invoice.send", EMAIL, IM}
    assert "unknown task contract 'billing.invoice.send'" in parked["billing.invoice.send"]
    assert "message not readable" in parked[EMAIL]
    assert "is for task 'notifier.email.send'" in parked[IM]
    assert relay.run_once() == 0  # parked rows are not taken again
    assert publisher.task_ids == good


@REDIS_ONLY
def test_pruning_removes_sent_rows_older_than_the_retention_in_batches(
    broker: BrokerEnv,
    tasklane_setting: Callable[..., None],
    recording: Callable[..., RecordingPublisher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.utils import timezone

    from tasklane.contrib.django import relay as relay_module
    from tasklane.contrib.django.models import OutboxMessage

    configure(tasklane_setting, broker, OUTBOX_RETENTION=3600)
    ids = write_emails([f"row {i}" for i in range(9)])
    now = timezone.now()
    long_ago = now - timedelta(seconds=3600 + 60)
    old_sent, recent_sent, old_pending, old_parked = ids[:5], ids[5:6], ids[6:7], ids[7:8]
    rows = OutboxMessage.objects
    rows.filter(task_id__in=old_sent).update(state="sent", sent_at=long_ago, created_at=long_ago)
    rows.filter(task_id__in=recent_sent).update(
        state="sent", sent_at=now - timedelta(seconds=3500), created_at=long_ago
    )
    rows.filter(task_id__in=old_pending).update(created_at=long_ago)
    rows.filter(task_id__in=old_parked).update(state="parked", created_at=long_ago)
    monkeypatch.setattr(relay_module, "PRUNE_BATCH", 2)  # 5 rows: three deletes

    relay = relay_module.Relay(publisher=recording())
    assert relay.prune() == 5
    assert states(ids) == {
        recent_sent[0]: "sent",
        old_pending[0]: "pending",
        old_parked[0]: "parked",
        ids[8]: "pending",
    }
    assert relay.prune() == 0
