"""Queues, dead-letter queues and routes, all derived from the contract registry.

On RabbitMQ, work queues and DLQs are quorum queues unless the settings ask for classic ones
(:class:`QueueOptions`); Redis ignores the queue type. Design: docs/reliability.md#broker-nodes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from kombu.entity import Exchange, Queue

from tasklane.contracts import ContractRegistry, TaskContract

if TYPE_CHECKING:
    from tasklane.settings import Settings

MAX_PRIORITY = 9
DLQ_SUFFIX = ".dlq"

QueueType = Literal["classic", "quorum"]


@dataclass(frozen=True)
class QueueOptions:
    """How RabbitMQ declares the work queues and DLQs; every declaration uses the same, since
    RabbitMQ refuses to declare an existing queue with other arguments.

    Quorum queues are replicated by Raft across the cluster and survive losing a minority of its
    nodes. What changes with them:

    * no ``x-max-priority``: RabbitMQ 3.x quorum queues have no priorities, 4.x two levels (a
      message priority above 4 is "high"); contract priorities are sent and ordered by 4.x only;
    * ``x-delivery-limit``: a message that came back unacknowledged that many times (a worker
      that died running it counts) is dead-lettered to the DLQ on its next return rather than
      handed out again;
    * dead-lettering is ``at-least-once`` (RabbitMQ 3.10 and later): the broker keeps a
      dead-lettered message until the DLQ confirmed it, which needs ``x-overflow:
      reject-publish``;
    * the work exchange is a topic exchange, so that Celery's native delayed delivery (retries and
      countdowns held by the broker, not in a worker's prefetch) can route to the queue.
    """

    type: QueueType = "classic"
    delivery_limit: int = 20

    @classmethod
    def of(cls, settings: Settings) -> QueueOptions:
        """The options ``settings`` ask for; classic (and so unchanged) on Redis."""
        if settings.broker_is_redis:
            return CLASSIC
        return cls(settings.rabbitmq_queue_type, settings.rabbitmq_delivery_limit)

    @property
    def quorum(self) -> bool:
        return self.type == "quorum"


#: Classic queues with priorities: what Redis uses, and RabbitMQ when the settings ask for it.
CLASSIC = QueueOptions()


def queue_type_mismatch(error: BaseException, queue: str, options: QueueOptions) -> str | None:
    """What to do when RabbitMQ refused to declare ``queue`` (or its exchange, topic for quorum
    queues and direct for classic ones) because it exists as the other type; ``None`` for any
    other error."""
    text = str(error)
    if "inequivalent arg 'x-queue-type'" not in text and (
        "inequivalent arg 'type' for exchange" not in text
    ):
        return None
    return (
        f"queue {queue!r} was declared on the broker for another TASKLANE_RABBITMQ_QUEUE_TYPE "
        f"than {options.type}: drain it, delete it and its exchange (both are declared again), "
        "or set TASKLANE_RABBITMQ_QUEUE_TYPE to what they were declared with; "
        "docs/configuration.md#tasklane_rabbitmq_queue_type"
    )


def queue_name(contract: TaskContract[Any, Any], namespace: str = "") -> str:
    """The dedicated queue of a task type."""
    return f"{namespace}{contract.queue}"


def dlq_name(queue: str) -> str:
    """The dead-letter queue that belongs to ``queue``."""
    return f"{queue}{DLQ_SUFFIX}"


def dead_letter_exchange(namespace: str = "") -> Exchange:
    """The direct exchange RabbitMQ dead-letters into (by the DLQ's name as routing key)."""
    return Exchange(f"{namespace}tasklane.dlx", type="direct", durable=True)


def work_queue(
    contract: TaskContract[Any, Any], namespace: str = "", options: QueueOptions = CLASSIC
) -> Queue:
    """The Kombu queue of one contract, wired to its DLQ through RabbitMQ's dead-lettering."""
    name = queue_name(contract, namespace)
    dead_lettering = {
        "x-dead-letter-exchange": dead_letter_exchange(namespace).name,
        "x-dead-letter-routing-key": dlq_name(name),
    }
    if options.quorum:
        return Queue(
            name,
            Exchange(name, type="topic", durable=True),
            routing_key=name,
            durable=True,
            queue_arguments={
                "x-queue-type": "quorum",
                **dead_lettering,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
                "x-delivery-limit": options.delivery_limit,
            },
        )
    return Queue(
        name,
        Exchange(name, type="direct", durable=True),
        routing_key=name,
        durable=True,
        max_priority=MAX_PRIORITY,
        queue_arguments=dead_lettering,
    )


def dead_letter_queue_named(
    name: str, namespace: str = "", options: QueueOptions = CLASSIC
) -> Queue:
    """The DLQ called ``name``, declared as every declaration of it must be."""
    arguments = {"x-queue-type": "quorum"} if options.quorum else None
    return Queue(
        name,
        dead_letter_exchange(namespace),
        routing_key=name,
        durable=True,
        queue_arguments=arguments,
    )


def dead_letter_queue(
    contract: TaskContract[Any, Any], namespace: str = "", options: QueueOptions = CLASSIC
) -> Queue:
    """The DLQ of one contract's queue. Nothing consumes it; ``tasklane dlq`` reads it."""
    return dead_letter_queue_named(dlq_name(queue_name(contract, namespace)), namespace, options)


def work_queues(
    contracts: Iterable[TaskContract[Any, Any]],
    namespace: str = "",
    options: QueueOptions = CLASSIC,
) -> list[Queue]:
    """One queue per distinct contract queue, in name order."""
    seen: dict[str, Queue] = {}
    for contract in contracts:
        seen.setdefault(queue_name(contract, namespace), work_queue(contract, namespace, options))
    return [seen[name] for name in sorted(seen)]


def dead_letter_queues(
    contracts: Iterable[TaskContract[Any, Any]],
    namespace: str = "",
    options: QueueOptions = CLASSIC,
) -> list[Queue]:
    """One DLQ per distinct work queue, in name order."""
    seen: dict[str, Queue] = {}
    for contract in contracts:
        queue = dead_letter_queue(contract, namespace, options)
        seen.setdefault(queue.name, queue)
    return [seen[name] for name in sorted(seen)]


def task_routes(registry: ContractRegistry, namespace: str = "") -> dict[str, dict[str, Any]]:
    """Celery ``task_routes``: every contract's task name to its queue."""
    return {
        contract.name: {
            "queue": queue_name(contract, namespace),
            "routing_key": queue_name(contract, namespace),
        }
        for contract in registry
    }


def queues_for_service(
    registry: ContractRegistry,
    service: str,
    namespace: str = "",
    options: QueueOptions = CLASSIC,
) -> list[Queue]:
    """The queues one worker service consumes: exactly those of its own contracts."""
    contracts = registry.for_service(service)
    if not contracts:
        known = ", ".join(registry.services()) or "none"
        raise ValueError(f"no contracts for service {service!r} (services: {known})")
    return work_queues(contracts, namespace, options)
