"""Queues, dead-letter queues and routes, all derived from the contract registry."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kombu.entity import Exchange, Queue

from tasklane.contracts import ContractRegistry, TaskContract

MAX_PRIORITY = 9
DLQ_SUFFIX = ".dlq"


def queue_name(contract: TaskContract[Any, Any], namespace: str = "") -> str:
    """The dedicated queue of a task type."""
    return f"{namespace}{contract.queue}"


def dlq_name(queue: str) -> str:
    """The dead-letter queue that belongs to ``queue``."""
    return f"{queue}{DLQ_SUFFIX}"


def dead_letter_exchange(namespace: str = "") -> Exchange:
    """The direct exchange RabbitMQ dead-letters into (by the DLQ's name as routing key)."""
    return Exchange(f"{namespace}tasklane.dlx", type="direct", durable=True)


def work_queue(contract: TaskContract[Any, Any], namespace: str = "") -> Queue:
    """The Kombu queue of one contract, wired to its DLQ through RabbitMQ's dead-lettering."""
    name = queue_name(contract, namespace)
    return Queue(
        name,
        Exchange(name, type="direct", durable=True),
        routing_key=name,
        durable=True,
        max_priority=MAX_PRIORITY,
        queue_arguments={
            "x-dead-letter-exchange": dead_letter_exchange(namespace).name,
            "x-dead-letter-routing-key": dlq_name(name),
        },
    )


def dead_letter_queue(contract: TaskContract[Any, Any], namespace: str = "") -> Queue:
    """The DLQ of one contract's queue. Nothing consumes it; ``tasklane dlq`` reads it."""
    name = dlq_name(queue_name(contract, namespace))
    return Queue(name, dead_letter_exchange(namespace), routing_key=name, durable=True)


def work_queues(contracts: Iterable[TaskContract[Any, Any]], namespace: str = "") -> list[Queue]:
    """One queue per distinct contract queue, in name order."""
    seen: dict[str, Queue] = {}
    for contract in contracts:
        seen.setdefault(queue_name(contract, namespace), work_queue(contract, namespace))
    return [seen[name] for name in sorted(seen)]


def dead_letter_queues(
    contracts: Iterable[TaskContract[Any, Any]], namespace: str = ""
) -> list[Queue]:
    """One DLQ per distinct work queue, in name order."""
    seen: dict[str, Queue] = {}
    for contract in contracts:
        queue = dead_letter_queue(contract, namespace)
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
    registry: ContractRegistry, service: str, namespace: str = ""
) -> list[Queue]:
    """The queues one worker service consumes: exactly those of its own contracts."""
    contracts = registry.for_service(service)
    if not contracts:
        known = ", ".join(registry.services()) or "none"
        raise ValueError(f"no contracts for service {service!r} (services: {known})")
    return work_queues(contracts, namespace)
