"""ContractTask's decisions, taken without a worker: the task is run in this process with a pushed
request (Celery's eager request), so each decision is read off what the task raises or returns.

Retry, give up, dead-letter at once, deduplicate or wait for another delivery's claim: these are
the rules the integration tests prove end to end with real workers; here each is pinned alone.
Idempotency claims live in a real Redis (or the embedded Valkey when none answers).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.exceptions import Retry
from pydantic import Field

from tasklane import REGISTRY, Payload, Result, RetryPolicy, Settings, TaskContract, create_app
from tasklane.errors import PermanentError, TransientError
from tasklane.worker.app import TasklaneApp
from tasklane.worker.task import (
    BUSY_RETRY_DELAY,
    ContractTask,
    InvalidPayloadError,
    RetriesExhaustedError,
    reason_for,
)


class JobPayload(Payload):
    key: str = ""
    outcome: str = Field(default="ok", pattern="^(ok|transient|permanent|boom)$")
    retry_after: float | None = None


class JobResult(Result):
    key: str
    deduplicated: bool = False


JOB = TaskContract(
    name="unitjob.job.run",
    queue="unitjob.job",
    payload=JobPayload,
    result=JobResult,
    retry=RetryPolicy(max_retries=2, backoff_base=1.0, backoff_max=8.0, jitter=False),
    idempotency_key=("key",),
)
REGISTRY_WITH_JOB = REGISTRY.extended(JOB)


def run_job(payload: JobPayload) -> JobResult:
    if payload.outcome == "transient":
        raise TransientError("try later", retry_after=payload.retry_after)
    if payload.outcome == "permanent":
        raise PermanentError("never")
    if payload.outcome == "boom":
        raise RuntimeError("unexpected")
    return JobResult(key=payload.key)


@pytest.fixture
def app(redis_url: str) -> Iterator[TasklaneApp]:
    namespace = f"u{uuid.uuid4().hex[:8]}."
    settings = Settings(broker_url=redis_url, namespace=namespace)
    app = create_app("unitjob", settings=settings, registry=REGISTRY_WITH_JOB)
    app.implement(JOB)(run_job)
    yield app
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{namespace}*"):
        client.delete(key)


@pytest.fixture
def task(app: TasklaneApp) -> ContractTask:
    registered = app.tasks[JOB.name]
    assert isinstance(registered, ContractTask)
    return registered


def attempt(
    task: ContractTask,
    retries: int = 0,
    busy_waits: int = 0,
    headers: dict[str, Any] | None = None,
    **payload: Any,
) -> Any:
    """Run the task once as the ``retries + 1``-th delivery of a message.

    ``busy_waits`` of those deliveries waited for another's claim, as the store recorded them.
    """
    task_id = payload.pop("task_id", str(uuid.uuid4()))
    for _ in range(busy_waits):
        task.idempotency.count_wait(task_id)
    task.push_request(
        id=task_id,
        retries=retries,
        is_eager=True,
        called_directly=False,
        # Celery puts a message's headers on the request as attributes.
        **(headers or {}),
    )
    try:
        return task.execute((), payload)
    finally:
        task.pop_request()


def test_a_valid_payload_runs_and_returns_the_result_as_json(task: ContractTask) -> None:
    assert attempt(task, key="a") == {"key": "a", "deduplicated": False}


def test_an_invalid_payload_is_refused_for_good_naming_the_field(task: ContractTask) -> None:
    with pytest.raises(InvalidPayloadError, match="outcome: String should match pattern"):
        attempt(task, outcome="maybe")
    assert reason_for(InvalidPayloadError("x")) == "invalid-payload"


def test_positional_arguments_are_refused(task: ContractTask) -> None:
    task.push_request(id="p", retries=0, is_eager=True)
    try:
        with pytest.raises(InvalidPayloadError, match="keyword arguments"):
            task.execute(({"key": "a"},), {})
    finally:
        task.pop_request()


def test_a_transient_error_is_retried_with_the_policys_backoff(task: ContractTask) -> None:
    with pytest.raises(Retry) as first:
        attempt(task, outcome="transient")
    with pytest.raises(Retry) as second:
        attempt(task, retries=1, outcome="transient")
    # backoff_base * 2**retries_done, without jitter.
    assert (first.value.when, second.value.when) == (1.0, 2.0)


def test_retry_after_is_a_floor_under_the_backoff(task: ContractTask) -> None:
    with pytest.raises(Retry) as caught:
        attempt(task, outcome="transient", retry_after=5.0)
    assert caught.value.when == 5.0


def test_after_the_last_retry_the_task_gives_up_with_the_cause(task: ContractTask) -> None:
    with pytest.raises(RetriesExhaustedError, match="gave up after 3 attempts") as caught:
        attempt(task, retries=2, outcome="transient")
    assert isinstance(caught.value.__cause__, TransientError)
    assert reason_for(caught.value) == "retries-exhausted"


def test_retries_spent_waiting_for_a_claim_do_not_count(task: ContractTask) -> None:
    # Four deliveries so far, two of them waits for another delivery's claim: 2 retries done.
    with pytest.raises(RetriesExhaustedError):
        attempt(task, retries=4, busy_waits=2, outcome="transient")
    with pytest.raises(Retry):
        attempt(task, retries=3, busy_waits=2, outcome="transient")


@pytest.mark.parametrize("outcome", ["permanent", "boom"])
def test_errors_outside_the_retry_policy_are_raised_at_once(
    task: ContractTask, outcome: str
) -> None:
    with pytest.raises((PermanentError, RuntimeError)) as caught:
        attempt(task, outcome=outcome)
    assert reason_for(caught.value) == (
        "permanent-error" if outcome == "permanent" else "unexpected-error"
    )


def test_time_limits_are_dead_lettered_as_time_limit() -> None:
    assert reason_for(SoftTimeLimitExceeded()) == "time-limit"
    assert reason_for(TimeLimitExceeded(10)) == "time-limit"


def test_a_key_done_once_is_not_run_again(task: ContractTask) -> None:
    assert attempt(task, key="once") == {"key": "once", "deduplicated": False}
    # Even a payload that would fail now: the recorded result is returned instead.
    assert attempt(task, key="once", outcome="permanent") == {"key": "once", "deduplicated": True}


def test_a_key_claimed_by_another_delivery_waits_without_using_the_budget(
    task: ContractTask,
) -> None:
    settings = task.settings
    task.idempotency.begin(JOB.name, "held", "other-task", claim_ttl=60)
    with pytest.raises(Retry) as caught:
        attempt(task, retries=1, busy_waits=1, key="held", task_id="waiting")
    assert caught.value.when == BUSY_RETRY_DELAY
    assert task.idempotency.waits("waiting") == 2  # counted in the store, not in a header
    assert settings.namespace  # the claim lived under this test's namespace
    # Waiting has no limit: far past the policy's two retries, the task still waits.
    with pytest.raises(Retry):
        attempt(task, retries=40, busy_waits=40, key="held", task_id="long-wait")
    assert task.idempotency.waits("long-wait") == 41


@pytest.mark.parametrize("forged", [40, -40, "40", "many", None])
def test_a_busy_wait_count_sent_by_an_upstream_is_ignored(task: ContractTask, forged: Any) -> None:
    # A first delivery that fails: the first backoff, attempt 1, whatever the header says.
    with pytest.raises(Retry) as first:
        attempt(task, headers={"x-tasklane-busy-waits": forged}, outcome="transient")
    assert first.value.when == 1.0
    # The last allowed attempt gives up with the real count.
    with pytest.raises(RetriesExhaustedError, match="gave up after 3 attempts"):
        attempt(task, retries=2, headers={"x-tasklane-busy-waits": forged}, outcome="transient")


def test_a_failed_run_releases_its_claim_so_a_retry_can_take_it(task: ContractTask) -> None:
    with pytest.raises(Retry):
        attempt(task, key="k", outcome="transient")
    assert attempt(task, retries=1, key="k") == {"key": "k", "deduplicated": False}
