"""Read-only broker inspection: how many messages wait in each Tasklane queue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kombu.connection import Connection

from tasklane.contracts import ContractRegistry
from tasklane.settings import Settings
from tasklane.wire.broker import connect, redis_queue_keys
from tasklane.wire.routing import dead_letter_queues, work_queues

QueueKind = Literal["work", "dead-letter"]

#: AMQP reply code of a passive declare on a queue that does not exist.
NOT_FOUND = 404


@dataclass(frozen=True)
class QueueDepth:
    """The number of messages waiting in one queue (unacknowledged ones not included)."""

    name: str
    kind: QueueKind
    messages: int


def queue_names(registry: ContractRegistry, namespace: str = "") -> list[tuple[str, QueueKind]]:
    """Every work queue and DLQ of ``registry``: work queues first, each group in name order."""
    work: list[tuple[str, QueueKind]] = [(q.name, "work") for q in work_queues(registry, namespace)]
    dead: list[tuple[str, QueueKind]] = [
        (q.name, "dead-letter") for q in dead_letter_queues(registry, namespace)
    ]
    return work + dead


def _redis_depths(connection: Connection, names: list[str]) -> list[int]:
    with connection.channel() as channel:
        client = channel.client
        # Kombu emulates priorities with one list per step: the depth is the sum of them all.
        with client.pipeline(transaction=False) as pipe:
            for name in names:
                for key in redis_queue_keys(name):
                    pipe.llen(key)
            lengths: list[int] = pipe.execute()
    steps = len(redis_queue_keys(""))
    return [sum(lengths[i * steps : (i + 1) * steps]) for i in range(len(names))]


def _is_not_found(exc: BaseException) -> bool:
    return getattr(exc, "reply_code", getattr(exc, "code", None)) == NOT_FOUND


def passive_declares(connection: Connection, names: list[str]) -> list[tuple[int, int]]:
    """Messages waiting and consumers of each named AMQP queue; a missing queue counts as (0, 0).

    Passive declares: inspecting must never create a queue (with the wrong arguments).
    """
    found: list[tuple[int, int]] = []
    channel: Any = connection.channel()
    try:
        for name in names:
            try:
                _, count, consumers = channel.queue_declare(queue=name, passive=True)
            except connection.channel_errors as exc:
                if not _is_not_found(exc):
                    raise
                # The broker closes a channel on any channel error; the next queue needs a new one.
                channel = connection.channel()
                count = consumers = 0
            found.append((int(count), int(consumers)))
    finally:
        channel.close()
    return found


def depths(connection: Connection, names: list[str]) -> list[int]:
    """Messages waiting in each named queue; a queue that does not exist counts as empty."""
    if connection.transport.driver_type == "redis":
        return _redis_depths(connection, names)
    return [messages for messages, _ in passive_declares(connection, names)]


def queue_depths(settings: Settings, registry: ContractRegistry) -> list[QueueDepth]:
    """Messages waiting in every work queue and DLQ of ``registry`` under ``settings.namespace``.

    A queue that does not exist yet counts as empty.

    Raises:
        SettingsError: no broker is configured.
    """
    queues = queue_names(registry, settings.namespace)
    names = [name for name, _ in queues]
    with connect(settings) as connection:
        counts = depths(connection, names)
    return [
        QueueDepth(name, kind, count) for (name, kind), count in zip(queues, counts, strict=True)
    ]
