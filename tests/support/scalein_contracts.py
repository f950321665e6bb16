"""Contracts of a test-only service whose tasks run long enough to be caught by a shutdown."""

from __future__ import annotations

from tasklane.contracts import REGISTRY, Payload, Result, RetryPolicy, TaskContract


class LongPayload(Payload):
    label: str
    seconds: float


class LongResult(Result):
    label: str
    worker: str


LONG: TaskContract[LongPayload, LongResult] = TaskContract(
    name="scalein.long.run",
    queue="scalein.long",
    payload=LongPayload,
    result=LongResult,
    # Short limits keep the derived Redis visibility timeout small enough for a fast test.
    retry=RetryPolicy(max_retries=0, backoff_max=1.0),
    soft_time_limit=8.0,
    time_limit=10.0,
)

SCALEIN_REGISTRY = REGISTRY.extended(LONG)
