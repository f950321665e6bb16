"""publish and publish_on_commit without the outbox: sent at commit, never for a rollback, on
Redis and RabbitMQ, delivered by a real notifier worker."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connections, transaction

from notifier import identity
from tasklane.contracts import SEND_EMAIL
from tasklane.contrib.django import publish, publish_on_commit
from tasklane.errors import BrokerUnavailableError, PayloadValidationError
from tasklane_dev.sinks import SmtpSink, free_port
from tests.support import eventually
from tests.support.harness import BrokerEnv

pytestmark = pytest.mark.integration

EMAIL = {"to": ["ada@example.com"], "subject": "Order 12", "text": "on commit"}


class Rollback(Exception):
    """Raised inside an atomic block to leave it by an exception."""


@pytest.fixture
def on_broker(broker: BrokerEnv, tasklane_setting: Callable[..., None]) -> BrokerEnv:
    tasklane_setting(
        BROKER_URL=broker.broker_url,
        RESULT_BACKEND=broker.result_backend,
        NAMESPACE=broker.namespace,
    )
    return broker


def message_id(broker: BrokerEnv, task_id: str) -> str:
    """The Message-ID the notifier gives the email of task ``task_id`` (no idempotency key)."""
    key = identity.delivery_key(
        namespace=broker.namespace, task=SEND_EMAIL.name, idempotency_key=None, task_id=task_id
    )
    return identity.message_id(key, "localhost")  # the default sender's domain


def test_published_after_commit_and_delivered_by_a_worker(
    on_broker: BrokerEnv,
    email_queue_depth: Callable[[], int],
    smtp_sink: SmtpSink,
    start_worker: Callable[..., Any],
) -> None:
    with transaction.atomic():
        task_id = publish_on_commit(SEND_EMAIL, EMAIL)
        assert isinstance(task_id, str) and task_id
        assert email_queue_depth() == 0  # encoded, not sent: the transaction is open
    assert email_queue_depth() == 1

    start_worker()
    expected = message_id(on_broker, task_id)
    mail = eventually(
        lambda: [m for m in smtp_sink.messages if m.message["Message-ID"] == expected],
        timeout=30,
        message=lambda: f"an email with Message-ID {expected}; got {len(smtp_sink.messages)}",
    )
    assert mail[0].message["Subject"] == "Order 12"


def test_nothing_is_published_for_a_rolled_back_transaction(
    on_broker: BrokerEnv, email_queue_depth: Callable[[], int]
) -> None:
    with transaction.atomic():
        publish_on_commit(SEND_EMAIL, EMAIL)
        transaction.set_rollback(True)
    with pytest.raises(Rollback), transaction.atomic():
        publish_on_commit(SEND_EMAIL, EMAIL)
        raise Rollback
    with transaction.atomic():  # a savepoint rolled back inside a transaction that commits
        try:
            with transaction.atomic():
                publish_on_commit(SEND_EMAIL, EMAIL)
                raise Rollback
        except Rollback:
            pass
        kept = publish_on_commit(SEND_EMAIL, EMAIL)
    assert kept
    assert email_queue_depth() == 1  # the committed one alone


def test_outside_a_transaction_it_is_published_at_once(
    on_broker: BrokerEnv, email_queue_depth: Callable[[], int]
) -> None:
    assert connections["default"].get_autocommit()
    publish_on_commit(SEND_EMAIL, EMAIL)
    assert email_queue_depth() == 1


def test_publish_sends_now_whatever_the_transaction(
    on_broker: BrokerEnv, email_queue_depth: Callable[[], int]
) -> None:
    with transaction.atomic():
        handle = publish(SEND_EMAIL, EMAIL, task_id="sent-now-1")
        assert email_queue_depth() == 1
        transaction.set_rollback(True)
    assert handle.id == "sent-now-1"
    assert email_queue_depth() == 1


def test_a_bad_payload_raises_at_call_time_naming_the_field(
    tasklane_setting: Callable[..., None],
) -> None:
    tasklane_setting(BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    with transaction.atomic():
        with pytest.raises(PayloadValidationError, match="subject"):
            publish_on_commit(SEND_EMAIL, {"to": ["ada@example.com"], "text": "no subject"})
        assert connections["default"].run_on_commit == []  # nothing left to send at commit


def test_a_send_failing_after_commit_is_logged_with_the_task_id(
    tasklane_setting: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    tasklane_setting(BROKER_URL=f"redis://127.0.0.1:{free_port()}/0", PUBLISH_TIMEOUT=0.2)
    logger = "tasklane.contrib.django.publishing"
    with caplog.at_level(logging.ERROR, logger=logger):
        with transaction.atomic():
            task_id = publish_on_commit(SEND_EMAIL, EMAIL)
            assert caplog.records == []  # nothing tried before the commit
    (record,) = [r for r in caplog.records if r.name == logger]
    assert record.levelno == logging.ERROR
    assert task_id in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is BrokerUnavailableError
