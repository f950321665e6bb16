"""Contracts of a test-only service that exercises retry exhaustion and time limits."""

from __future__ import annotations

from tasklane.contracts import REGISTRY, Payload, Result, RetryPolicy, TaskContract


class FlakyPayload(Payload):
    label: str
    sleep: float = 0.0
    ignore_soft_limit: bool = False


class FlakyResult(Result):
    label: str


ALWAYS_FAILS: TaskContract[FlakyPayload, FlakyResult] = TaskContract(
    name="flaky.always.fail",
    queue="flaky.fail",
    payload=FlakyPayload,
    result=FlakyResult,
    retry=RetryPolicy(max_retries=2, backoff_base=0.2, backoff_max=1.0),
)

SLOW: TaskContract[FlakyPayload, FlakyResult] = TaskContract(
    name="flaky.slow.run",
    queue="flaky.slow",
    payload=FlakyPayload,
    result=FlakyResult,
    soft_time_limit=1.0,
    # Well past the soft limit: a loaded machine must still finish the soft limit's dead-lettering
    # before the hard limit could fire too.
    time_limit=8.0,
)

FLAKY_REGISTRY = REGISTRY.extended(ALWAYS_FAILS, SLOW)
