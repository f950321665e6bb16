"""The worker side of a contract: a Celery task base that validates, retries and dead-letters.

A service implements a contract with :meth:`tasklane.worker.app.TasklaneApp.implement`; its
function takes the payload model and returns the result model, and knows nothing of Celery.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from functools import cached_property
from typing import Any, TypeVar

import redis
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery import Task
from celery.exceptions import Retry
from pydantic import BaseModel, ValidationError

from tasklane.contracts import TaskContract
from tasklane.contracts.validation import problems_of
from tasklane.errors import PayloadValidationError, PermanentError, TransientError
from tasklane.observability.metrics import record_dead_letter
from tasklane.observability.runs import RunObservers, Tracer
from tasklane.settings import Settings
from tasklane.wire.broker import redis_client
from tasklane.wire.deadletter import dead_letter_headers, send_to_dlq
from tasklane.wire.delayed import declare_delayed_delivery
from tasklane.wire.headers import DEAD_LETTER_HEADERS, PREFIX
from tasklane.wire.protocol import CONTENT_ENCODING, CONTENT_TYPE, encode_body, task_headers
from tasklane.wire.routing import QueueOptions, queue_name, work_queue
from tasklane.worker.idempotency import IdempotencyStore

logger = logging.getLogger(__name__)

PayloadT = TypeVar("PayloadT", bound=BaseModel)
ResultT = TypeVar("ResultT", bound=BaseModel)

#: Seconds a second publish of a key waits before checking again whether the first one finished.
BUSY_RETRY_DELAY = 5.0


class InvalidPayloadError(PermanentError):
    """A message reached the worker with a payload that breaks its contract."""


class RetriesExhaustedError(PermanentError):
    """A retryable error persisted through every retry the policy allows."""


class ContractTask(Task):  # type: ignore[misc]
    """Celery task bound to a :class:`TaskContract`."""

    contract: TaskContract[Any, Any]
    implementation: Callable[[Any], BaseModel]
    #: Called with the payload after a valid task was dead-lettered, so that a service can
    #: account for work that will not be done (a crawl counting its pages, say).
    dead_letter_hook: Callable[[Any, Exception], None] | None = None
    typing = False  # the payload model checks arguments, with better errors
    #: Whether this process declared the broker's delay levels for retries (quorum queues).
    _delayed_ready = False
    _observed_tracer: Tracer | None = None

    # Celery sets a task's tracer (the function that runs it in a worker process) in every pool:
    # each one set is wrapped by the app's run observers, which start and end the run's metrics
    # and span around it without a signal per run (tasklane.observability.runs).
    @property
    def __trace__(self) -> Tracer | None:
        return self._observed_tracer

    @__trace__.setter
    def __trace__(self, tracer: Tracer | None) -> None:
        observers: RunObservers | None = getattr(self.app, "run_observers", None)
        if tracer is not None and observers is not None:
            tracer = observers.observe(self, tracer)
        self._observed_tracer = tracer

    @property
    def settings(self) -> Settings:
        """The app's settings (a :class:`tasklane.worker.app.TasklaneApp`)."""
        settings: Settings = self.app.settings
        return settings

    @cached_property
    def idempotency(self) -> IdempotencyStore:
        """This process's idempotency store (created after the pool forks)."""
        client = redis_client(self.settings.require_state(), self.settings)
        return IdempotencyStore(
            client, namespace=self.settings.namespace, done_ttl=self.settings.idempotency_ttl
        )

    def execute(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Validate, run once per idempotency key, and retry or fail per the contract."""
        payload = self.validate(args, kwargs)
        key = self.contract.idempotency_value(payload.model_dump())
        task_id = self.request.id
        if key is not None:
            try:
                claim = self.idempotency.begin(
                    self.contract.name,
                    key,
                    task_id,
                    claim_ttl=self.contract.time_limit + 30,
                    redelivered=bool((self.request.delivery_info or {}).get("redelivered")),
                )
            except redis.RedisError as exc:
                self._retry_or_raise(TransientError(f"idempotency store unavailable: {exc}"))
                raise
            if claim.state == "done":
                return self._deduplicated(claim.result)
            if claim.state == "busy":
                # Waiting for another delivery of the same key is not a failed attempt: the wait
                # is counted apart (in the store) so that it does not use up the retry budget.
                try:
                    self.idempotency.count_wait(task_id)
                except redis.RedisError as exc:
                    self._retry_or_raise(TransientError(f"idempotency store unavailable: {exc}"))
                    raise
                raise self.retry(
                    exc=TransientError(f"idempotency key held by task {claim.owner}"),
                    countdown=self._countdown(BUSY_RETRY_DELAY),
                    max_retries=self._this_retry(),
                )
        try:
            result = self.implementation(payload).model_dump(mode="json")
        except Exception as exc:
            if key is not None:
                self._forget_claim(key, task_id)
            self._retry_or_raise(exc)
            raise
        if key is not None:
            try:
                self.idempotency.complete(self.contract.name, key, task_id, result)
            except redis.RedisError:
                # Delivered, but not recorded: a redelivery of this key would deliver again.
                logger.exception("%s[%s]: could not record idempotency key", self.name, task_id)
        return result

    def _this_retry(self) -> int:
        # Celery reads max_retries=None as "the task's own limit" and would stop a busy wait at
        # it: allowing exactly the retry about to be sent leaves the counting to Tasklane.
        return (self.request.retries or 0) + 1

    def _busy_waits(self) -> int:
        """Deliveries of this task id that waited for another's claim (never more than retries)."""
        retries = self.request.retries or 0
        if not self.contract.idempotency_key or retries == 0:
            return 0  # only a keyed task waits, and a first delivery has not waited yet
        try:
            waits = self.idempotency.waits(self.request.id)
        except redis.RedisError:
            logger.warning("%s[%s]: busy waits unknown, counted as 0", self.name, self.request.id)
            return 0
        return min(waits, retries)

    def _forget_claim(self, key: str, task_id: str) -> None:
        try:
            self.idempotency.release(self.contract.name, key, task_id)
        except redis.RedisError:
            logger.warning("%s[%s]: claim left to expire", self.name, task_id)

    def validate(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> BaseModel:
        """The payload model from the message's arguments, or :class:`InvalidPayloadError`."""
        if args:
            raise InvalidPayloadError(
                f"{self.contract.name} takes the payload as keyword arguments, got {len(args)} "
                "positional argument(s)"
            )
        size = len(encode_body(kwargs))
        if size > self.settings.max_payload_bytes:
            raise InvalidPayloadError(
                f"payload: {size} bytes, over the limit of {self.settings.max_payload_bytes}"
            )
        try:
            payload: BaseModel = self.contract.payload.model_validate(kwargs)
            return payload
        except ValidationError as exc:
            raise InvalidPayloadError(
                str(PayloadValidationError(self.contract.name, problems_of(exc)))
            ) from None

    def _countdown(self, seconds: float) -> float:
        """The retry's countdown as the broker can hold it.

        On quorum queues the broker holds a retry (Celery's native delayed delivery) in whole
        seconds, and refuses less than one: a fraction is rounded up.
        """
        options = QueueOptions.of(self.settings)
        if not options.quorum:
            return seconds
        if not self._delayed_ready:
            # Celery declares the delay levels when the consumer starts, possibly after this
            # process took its first message: a retry sent to a level not declared yet would be
            # dropped by the broker.
            queue = work_queue(self.contract, self.settings.namespace, options)
            with self.app.connection_for_write() as connection:
                declare_delayed_delivery(connection, [queue])
            self._delayed_ready = True
        return float(max(1, math.ceil(seconds)))

    def _retry_or_raise(self, exc: Exception) -> None:
        policy = self.contract.retry
        if not policy.retries(exc):
            return
        done = (self.request.retries or 0) - self._busy_waits()
        if done >= policy.max_retries:
            raise RetriesExhaustedError(
                f"gave up after {done + 1} attempts: {type(exc).__name__}: {exc}"
            ) from exc
        retry_after = getattr(exc, "retry_after", None)
        countdown = self._countdown(policy.delay(done, retry_after))
        logger.warning(
            "%s[%s] attempt %d failed (%s: %s); retrying in %.1fs",
            self.contract.name,
            self.request.id,
            done + 1,
            type(exc).__name__,
            exc,
            countdown,
        )
        raise self.retry(
            exc=exc,
            countdown=countdown,
            max_retries=self._this_retry(),  # counted above, busy waits excluded
        )

    def _deduplicated(self, stored: Any) -> Any:
        result = json.loads(stored) if isinstance(stored, str) else stored
        if isinstance(result, dict) and "deduplicated" in self.contract.result.model_fields:
            result["deduplicated"] = True
        return result

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Every final failure lands in the queue's DLQ with the original payload and the reason.

        Celery calls this in the pool process, and in the worker's main process after a hard time
        limit killed the pool process.
        """
        if isinstance(exc, Retry):
            return
        reason = reason_for(exc)
        queue = queue_name(self.contract, self.settings.namespace)
        request = self.request
        headers = task_headers(
            self.contract.name,
            task_id,
            retries=request.retries or 0,
            root_id=request.root_id,
            parent_id=request.parent_id,
        )
        original = getattr(request, "headers", None) or {}
        # Describing headers (publish time, schedule) go along; reason headers are the worker's.
        headers.update(
            {
                k: v
                for k, v in original.items()
                if k.startswith(PREFIX) and k not in DEAD_LETTER_HEADERS
            }
        )
        error_type = (
            type(exc.__cause__ or exc).__name__
            if reason == "retries-exhausted"
            else type(exc).__name__
        )
        letter: dict[str, Any] = {
            "queue": queue,
            "namespace": self.settings.namespace,
            "options": QueueOptions.of(self.settings),
            "body": encode_body(dict(kwargs or {}), list(args or [])),
            "content_type": CONTENT_TYPE,
            "content_encoding": CONTENT_ENCODING,
            "headers": dead_letter_headers(
                headers,
                queue=queue,
                reason=reason,
                error_type=error_type,
                error=str(exc),
                attempts=(request.retries or 0) - self._busy_waits() + 1,
                worker=request.hostname or "",
            ),
            "properties": {"correlation_id": task_id},
        }
        try:
            try:
                self._send_dead_letter(letter)
            except SoftTimeLimitExceeded:
                # A task that failed just before its soft time limit: the limit's signal, sent
                # once a run, raised this in the middle of the write. The interrupted Redis
                # connection is closed; the write starts again on another.
                self._send_dead_letter(letter)
        except Exception:  # the failure is still recorded in the result backend
            logger.exception("could not dead-letter %s[%s]", self.contract.name, task_id)
        else:
            if self.app.metrics is not None:
                record_dead_letter(self.contract.name, queue, reason)
        if self.dead_letter_hook is not None and reason != "invalid-payload":
            self._run_dead_letter_hook(exc, task_id, kwargs)

    def _send_dead_letter(self, letter: dict[str, Any]) -> None:
        with self.app.producer_or_acquire() as producer:
            send_to_dlq(producer, **letter)

    def _run_dead_letter_hook(self, exc: Exception, task_id: str, kwargs: Any) -> None:
        assert self.dead_letter_hook is not None
        try:
            payload = self.contract.payload.model_validate(dict(kwargs or {}))
            self.dead_letter_hook(payload, exc)
        except Exception:
            logger.exception("dead-letter hook of %s[%s] failed", self.contract.name, task_id)


def reason_for(exc: BaseException) -> str:
    """The dead-letter reason of a final failure (x-tasklane-reason)."""
    if isinstance(exc, InvalidPayloadError):
        return "invalid-payload"
    if isinstance(exc, RetriesExhaustedError):
        return "retries-exhausted"
    if isinstance(exc, SoftTimeLimitExceeded | TimeLimitExceeded):
        return "time-limit"
    if isinstance(exc, PermanentError):
        return "permanent-error"
    return "unexpected-error"
