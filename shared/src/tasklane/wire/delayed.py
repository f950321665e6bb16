"""Countdowns on RabbitMQ quorum queues, held by the broker rather than by a worker.

A worker holds a message whose ``eta`` is still ahead of it until then, and on classic queues
Celery widens the channel's prefetch (global QoS) to keep taking others meanwhile. Quorum queues
have no global QoS: held messages would fill the prefetch and the worker would stop taking any.
So, as Celery 5.5+ does for its own retries, a countdown message goes through Kombu's native
delayed delivery instead: 28 levels of exchanges and quorum queues whose TTLs add up, bit by bit,
to the whole seconds of the countdown, and from the last one to the work queue's topic exchange.
The ``eta`` header stays, so a message that arrives a fraction early is held for that fraction.

Celery names the levels without a prefix (``celery_delayed_27`` …) and so does this module: the
worker's retries and the publisher's countdowns share one topology per virtual host.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from kombu.connection import Connection
from kombu.entity import Queue
from kombu.transport.native_delayed_delivery import (
    MAX_LEVEL,
    bind_queue_to_native_delayed_delivery_exchange,
    calculate_routing_key,
    declare_native_delayed_delivery_exchanges_and_queues,
    level_name,
)

#: Where a delayed message is published: the level of the longest delay.
DELAY_EXCHANGE = level_name(MAX_LEVEL)
#: The longest countdown the levels can hold, in seconds (about 8.5 years).
LONGEST_DELAY = 2 ** (MAX_LEVEL + 1) - 1


def declare_delayed_delivery(connection: Connection, queues: Iterable[Queue]) -> None:
    """Declare the delay levels (quorum queues) and route their end to each of ``queues``.

    Idempotent: RabbitMQ accepts the same declarations again.
    """
    declare_native_delayed_delivery_exchanges_and_queues(connection, "quorum")
    for queue in queues:
        bind_queue_to_native_delayed_delivery_exchange(connection, queue)


def delayed_route(headers: Mapping[str, Any], queue: str, now: datetime) -> tuple[str, str] | None:
    """The ``(exchange, routing key)`` that holds a message with an ``eta`` ahead of ``now``
    in the broker; ``None`` when it is due within the second (send it to its queue).
    """
    eta = headers.get("eta")
    if not eta:
        return None
    seconds = (datetime.fromisoformat(str(eta)) - now).total_seconds()
    # Whole seconds, rounded up: a message must not arrive before its eta by more than the
    # fraction the worker then holds it for.
    whole = min(LONGEST_DELAY, math.ceil(seconds))
    if whole < 1:
        return None
    return DELAY_EXCHANGE, calculate_routing_key(whole, queue)
