"""Publishing from Django: now, or once the caller's transaction commits, directly or through
the transactional outbox (``TASKLANE["OUTBOX"]``).

One :class:`~tasklane.publish.Publisher` per process, made on first use from ``TASKLANE``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, TypeVar, overload

from django.core.signals import setting_changed
from django.db import transaction
from pydantic import BaseModel

from tasklane.contracts import TaskContract
from tasklane.contrib.django.conf import SETTING, options
from tasklane.contrib.django.outbox import enqueue
from tasklane.publish import Publisher, TaskHandle
from tasklane.wire.protocol import TaskMessage

ResultT = TypeVar("ResultT", bound=BaseModel)

#: How a publish left the caller: sent at once, after commit, or as an outbox row.
Via = Literal["now", "on_commit", "outbox"]

#: Takes a publish instead of the broker (``tasklane.contrib.django.testing``): the contract's
#: name, the encoded message and how it was published.
Recorder = Callable[[str, TaskMessage, Via], None]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_publisher: Publisher | None = None
_recorders: list[Recorder] = []


def publisher() -> Publisher:
    """This process's publisher, made from ``TASKLANE`` on first use (again after a change)."""
    global _publisher
    with _lock:
        if _publisher is None:
            config = options()
            _publisher = Publisher(config.settings, registry=config.registry)
        return _publisher


@overload
def publish(
    contract: TaskContract[Any, ResultT],
    payload: BaseModel | Mapping[str, Any],
    *,
    task_id: str | None = None,
    priority: int | None = None,
    countdown: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> TaskHandle[ResultT]: ...


@overload
def publish(
    contract: str,
    payload: BaseModel | Mapping[str, Any],
    *,
    task_id: str | None = None,
    priority: int | None = None,
    countdown: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> TaskHandle[Any]: ...


def publish(
    contract: str | TaskContract[Any, Any],
    payload: BaseModel | Mapping[str, Any],
    *,
    task_id: str | None = None,
    priority: int | None = None,
    countdown: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> TaskHandle[Any]:
    """Validate and send one task now, whatever transaction is open (see ``Publisher.publish``).

    Raises:
        UnknownContractError: no contract of that name.
        PayloadValidationError: the payload breaks the contract (the message names the field).
        BrokerUnavailableError: the broker did not take the message in time.
    """
    sender = publisher()
    recorders = _active_recorders()
    if not recorders:
        return sender.publish(
            contract,
            payload,
            task_id=task_id,
            priority=priority,
            countdown=countdown,
            headers=headers,
        )
    message = sender.encode(
        contract, payload, task_id=task_id, priority=priority, countdown=countdown, headers=headers
    )
    _record(recorders, sender.contract(contract).name, message, "now")
    return sender.handle(contract, message.task_id)


def publish_on_commit(
    contract: str | TaskContract[Any, Any],
    payload: BaseModel | Mapping[str, Any],
    *,
    using: str | None = None,
    task_id: str | None = None,
    priority: int | None = None,
    countdown: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """Validate and encode one task now; send it when the transaction on ``using`` commits.

    Nothing is sent for a transaction rolled back; outside a transaction it is sent at once.
    With ``TASKLANE["OUTBOX"]`` the message is written to the outbox in the caller's
    transaction (``using`` must be ``OUTBOX_DATABASE``) and the relay sends it: it survives a
    broker outage or a crash after commit. Without it, a send that fails after commit is logged
    at ERROR with the task id and the task is lost. ``countdown`` counts from this call.

    Returns:
        The task id.

    Raises:
        UnknownContractError: no contract of that name.
        PayloadValidationError: the payload breaks the contract (the message names the field).
        ValueError: with the outbox, ``using`` names another database than the outbox's.
    """
    sender = publisher()
    recorders = _active_recorders()
    name = sender.contract(contract).name
    if options().outbox:
        message = enqueue(
            sender,
            contract,
            payload,
            using=using,
            task_id=task_id,
            priority=priority,
            countdown=countdown,
            headers=headers,
        )
        _record(recorders, name, message, "outbox")
        return message.task_id
    message = sender.encode(
        contract, payload, task_id=task_id, priority=priority, countdown=countdown, headers=headers
    )

    def send_after_commit() -> None:
        if recorders:
            _record(recorders, name, message, "on_commit")
            return
        try:
            publisher().send(name, [message])
        except Exception:
            # The transaction has committed: nothing can undo it, and the caller has gone on.
            logger.error(
                "task %s %s was not published after its transaction committed "
                "(TASKLANE['OUTBOX'] keeps such tasks until the broker takes them)",
                name,
                message.task_id,
                exc_info=True,
            )

    transaction.on_commit(send_after_commit, using=using, robust=True)
    return message.task_id


@contextlib.contextmanager
def recording(recorder: Recorder) -> Iterator[None]:
    """While open, every publish goes to ``recorder`` instead of a broker (outbox rows are
    still written). A publish is recorded by the recorders open when it was called."""
    with _lock:
        _recorders.append(recorder)
    try:
        yield
    finally:
        with _lock:
            _recorders.remove(recorder)


def _active_recorders() -> tuple[Recorder, ...]:
    with _lock:
        return tuple(_recorders)


def _record(recorders: tuple[Recorder, ...], contract: str, message: TaskMessage, via: Via) -> None:
    for recorder in recorders:
        recorder(contract, message, via)


def _forget(*, setting: str, **_: object) -> None:
    """A changed ``TASKLANE`` (tests' ``override_settings``) takes a new publisher."""
    global _publisher
    if setting != SETTING:
        return
    with _lock:
        stale, _publisher = _publisher, None
    if stale is not None:
        stale.close()


setting_changed.connect(_forget, dispatch_uid="tasklane.contrib.django.publishing")
