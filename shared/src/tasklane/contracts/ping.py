"""No-op ``<queue>.ping`` contracts: one per work queue, for smoke tests such as ``helm test``.

A ping travels the same path as real work (publisher, broker, the pool that consumes the queue,
result backend), so a ping answered on every queue proves every pool of a deployment consumes.
Pings reuse the existing work queues: they add no queue and change no pool's time limits.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import Field

from tasklane.contracts.base import Payload, Result, RetryPolicy, TaskContract

PING_SUFFIX = ".ping"


class PingPayload(Payload):
    """An empty payload: ``{}``."""


class PingResult(Result):
    """The answer of the worker that consumed the ping."""

    pong: bool = Field(default=True, description="Always true: a worker ran the ping.")
    queue: str = Field(description="The contract queue the ping travelled on (no namespace).")


#: Never retried: a ping that fails should fail the smoke test, not hide behind backoff.
PING_RETRY = RetryPolicy(retry_on=(), max_retries=0)


def ping_contract(queue: str) -> TaskContract[PingPayload, PingResult]:
    """The ping contract of one work queue (``notifier.email`` -> ``notifier.email.ping``)."""
    return TaskContract(
        name=f"{queue}{PING_SUFFIX}",
        queue=queue,
        payload=PingPayload,
        result=PingResult,
        description=f"No-op answered by the pool that consumes {queue}.",
        retry=PING_RETRY,
        soft_time_limit=5.0,
        time_limit=10.0,
        # Highest priority: a smoke test should not wait behind a backlog of real work.
        priority=9,
    )


def ping_contracts(
    contracts: Iterable[TaskContract[Any, Any]],
) -> tuple[TaskContract[PingPayload, PingResult], ...]:
    """One ping contract per distinct queue of ``contracts``, in queue-name order."""
    return tuple(ping_contract(queue) for queue in sorted({c.queue for c in contracts}))


def is_ping(contract: TaskContract[Any, Any]) -> bool:
    """Whether ``contract`` is a ping contract."""
    return contract.payload is PingPayload


def pong(contract: TaskContract[PingPayload, PingResult]) -> PingResult:
    """The result a worker returns for a ping of ``contract``."""
    return PingResult(queue=contract.queue)
