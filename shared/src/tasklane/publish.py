"""The publisher: validate a payload against its contract, route it and send it by task name.

Upstream services use this module alone; it never imports worker code.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from kombu.connection import Connection
from kombu.exceptions import BatchPublishError, OperationalError
from kombu.messaging import Producer
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue
from pydantic import BaseModel

from tasklane.contracts import REGISTRY, ContractRegistry, TaskContract
from tasklane.contracts.validation import validate_payload, validate_payloads
from tasklane.errors import (
    BrokerUnavailableError,
    PayloadTooLargeError,
    PayloadValidationError,
    Problem,
    SettingsError,
    TaskFailedError,
)
from tasklane.wire.amqp_confirms import ConfirmedChannel
from tasklane.wire.broker import connect, redacted
from tasklane.wire.config import base_config
from tasklane.wire.delayed import declare_delayed_delivery, delayed_route
from tasklane.wire.headers import PREFIX, PUBLISHER_HEADERS
from tasklane.wire.protocol import (
    TaskMessage,
    body_from_json,
    eta_and_expiry,
    kwargs_repr,
    new_id_key,
    task_headers,
    task_id_at,
    task_message,
)
from tasklane.wire.redis_envelope import Envelope, EnvelopeWriter, envelope, push
from tasklane.wire.routing import (
    MAX_PRIORITY,
    QueueOptions,
    dead_letter_queue,
    queue_name,
    queue_type_mismatch,
    work_queue,
)

if TYPE_CHECKING:
    from celery import Celery
    from celery.result import AsyncResult
    from prometheus_client import Counter

    from tasklane.settings import Settings

PayloadT = TypeVar("PayloadT", bound=BaseModel)
ResultT = TypeVar("ResultT", bound=BaseModel)

#: Seconds a result wait trusts Redis's announcement before reading the stored result again.
RESULT_RECHECK_INTERVAL = 1.0
#: Pauses between publish attempts through an outage double from the first to the last: a publish
#: waiting for the broker resumes within the last pause (plus a connect) of its return.
_FIRST_RETRY_PAUSE = 0.05
_LAST_RETRY_PAUSE = 0.25
#: The protocol's header names, which a caller's headers may not replace.
_PROTOCOL_HEADERS = frozenset(task_headers("", ""))


class ResultReader:
    """Reads task results from the result backend with Tasklane's base Celery configuration.

    The Celery app is made on first use: Celery's app and result modules are most of what a
    publisher would import, and an upstream that never reads a result never needs them.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._app: Celery | None = None
        self._lock = threading.Lock()

    def result(self, task_id: str) -> AsyncResult:
        """Celery's handle on the result of ``task_id``."""
        from celery import Celery
        from celery.result import AsyncResult

        with self._lock:
            if self._app is None:
                self._app = Celery("tasklane-publisher", set_as_current=False)
                self._app.conf.update(base_config(self._settings))
            return AsyncResult(task_id, app=self._app)

    def close(self) -> None:
        """Release the result backend's connections, if any were made."""
        with self._lock:
            if self._app is not None:
                self._app.close()


class TaskHandle(Generic[ResultT]):
    """A published task: its id, whether it finished, and its typed result."""

    def __init__(
        self, task_id: str, contract: TaskContract[Any, ResultT], results: ResultReader
    ) -> None:
        self.id = task_id
        self.contract = contract
        self._results = results

    def __repr__(self) -> str:
        return f"<TaskHandle {self.contract.name} {self.id}>"

    @property
    def _async(self) -> AsyncResult:
        return self._results.result(self.id)

    @property
    def state(self) -> str:
        """Celery's state name: PENDING, STARTED, RETRY, SUCCESS or FAILURE."""
        return str(self._async.state)

    def ready(self) -> bool:
        """Whether the task has finished (succeeded or failed for good)."""
        return bool(self._async.ready())

    def get(self, timeout: float | None = 30.0) -> ResultT:
        """Wait for the result and return it as the contract's result model.

        Raises:
            TaskFailedError: the task failed; its error type and text are attached.
            TimeoutError: no result within ``timeout`` seconds.
        """
        from celery.exceptions import TimeoutError as ResultTimeout  # not a builtin subclass

        async_result = self._async
        deadline = None if timeout is None else time.monotonic() + timeout
        # Celery's Redis reader subscribes to the result on one connection and reads it once on
        # another; Redis orders nothing between the two, and announces a result only to
        # subscriptions it already holds. A result stored in between would never be announced,
        # so the wait is cut into slices, and each slice begins with Celery reading it again.
        while True:
            left = RESULT_RECHECK_INTERVAL if deadline is None else deadline - time.monotonic()
            try:
                value = async_result.get(
                    timeout=max(0.0, min(left, RESULT_RECHECK_INTERVAL)),
                    propagate=False,
                    disable_sync_subtasks=False,
                )
                break
            except ResultTimeout:
                if deadline is not None and time.monotonic() >= deadline:
                    message = f"{self.contract.name} {self.id}: no result in {timeout}s"
                    raise TimeoutError(message) from None
        if async_result.state != "SUCCESS":
            raise TaskFailedError(self.id, type(value).__name__, str(value))
        return self.contract.result.model_validate(value)


class PublishedTasks(Sequence[TaskHandle[ResultT]]):
    """The tasks one :meth:`Publisher.publish_many` call sent, in payload order.

    A handle is made when asked for, from the id source it holds: the caller's ``task_ids``, or
    the key the call's new ids were derived from (:func:`tasklane.wire.protocol.task_id_at`).
    """

    def __init__(
        self,
        contract: TaskContract[Any, ResultT],
        ids: Sequence[str] | bytes,
        count: int,
        results: ResultReader,
    ) -> None:
        self.contract = contract
        self._ids = ids
        self._count = count
        self._results = results

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"<PublishedTasks {self.contract.name} x{self._count}>"

    @overload
    def __getitem__(self, index: int) -> TaskHandle[ResultT]: ...

    @overload
    def __getitem__(self, index: slice) -> list[TaskHandle[ResultT]]: ...

    def __getitem__(self, index: int | slice) -> TaskHandle[ResultT] | list[TaskHandle[ResultT]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("task index out of range")
        return TaskHandle(self.id_at(index), self.contract, self._results)

    def id_at(self, index: int) -> str:
        """The id of task ``index`` (without making its handle)."""
        if isinstance(self._ids, bytes):
            return task_id_at(self._ids, index)
        return self._ids[index]

    @property
    def ids(self) -> list[str]:
        """Every task id, in order (a list: for a million tasks, a million strings)."""
        return [self.id_at(i) for i in range(self._count)]


class Publisher:
    """Publishes contract tasks over one broker connection; thread-safe, reuse it.

    Args:
        settings: platform settings; read from the environment when omitted.
        registry: the contracts this publisher knows.
    """

    def __init__(
        self, settings: Settings | None = None, *, registry: ContractRegistry = REGISTRY
    ) -> None:
        if settings is None:
            # pydantic-settings is most of what this module would import: read when needed.
            from tasklane.settings import load_settings

            settings = load_settings()
        self.settings = settings
        self.registry = registry
        self._reconnects = 0
        self._connection: Connection = self._connect()
        self._confirmed: ConfirmedChannel | None = None
        self._declared: set[str] = set()
        self._queue_options = QueueOptions.of(self.settings)
        #: Work queues the broker's delay levels lead to, declared on this connection.
        self._delayed: set[str] = set()
        #: Envelope templates of single publishes on Redis, by task name and priority step.
        self._writers: dict[tuple[str, int], EnvelopeWriter] = {}
        #: Kombu's Redis client pinned to one connection of its own (_redis_client).
        self._redis: Any = None
        self._lock = threading.Lock()
        self._results = ResultReader(self.settings)
        # The API's proxy: no-op spans until this process starts tracing
        # (tasklane.observability.tracing).
        self._tracer = trace.get_tracer(__name__)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _connect(self) -> Connection:
        # A publisher never waits for messages, so every socket call may time out.
        return connect(
            self.settings,
            socket_timeout=self.settings.publish_timeout,
            first_node=self._reconnects,
        )

    def close(self) -> None:
        """Release the broker connection."""
        with self._lock:
            self._confirmed = None
            self._declared.clear()
            self._delayed.clear()
            self._release_redis_client()
            self._connection.release()
        self._results.close()

    def contract(
        self, task: str | TaskContract[PayloadT, ResultT]
    ) -> TaskContract[PayloadT, ResultT]:
        """The contract of a task given by name or contract."""
        if isinstance(task, TaskContract):
            return task
        return self.registry[task]

    @overload
    def publish(
        self,
        task: TaskContract[PayloadT, ResultT],
        payload: PayloadT | Mapping[str, Any],
        *,
        task_id: str | None = None,
        priority: int | None = None,
        countdown: float | None = None,
        expires: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> TaskHandle[ResultT]: ...

    @overload
    def publish(
        self,
        task: str,
        payload: BaseModel | Mapping[str, Any],
        *,
        task_id: str | None = None,
        priority: int | None = None,
        countdown: float | None = None,
        expires: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> TaskHandle[Any]: ...

    def publish(
        self,
        task: str | TaskContract[Any, Any],
        payload: BaseModel | Mapping[str, Any],
        *,
        task_id: str | None = None,
        priority: int | None = None,
        countdown: float | None = None,
        expires: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> TaskHandle[Any]:
        """Validate, route and send one task; ``countdown`` seconds later if given.

        ``expires`` (seconds): a worker that has not started the task by then drops it (Celery
        revokes it as expired) instead of running it late.

        ``headers`` are added to the message's headers (names starting ``x-``; they may not
        replace a protocol header, and of the ``x-tasklane-*`` names only the schedule ones are
        a publisher's). The send is a PRODUCER span whose W3C context goes in the
        ``traceparent``/``tracestate`` headers, so the task's run joins the caller's trace.

        Through a broker outage it retries on new connections for ``TASKLANE_PUBLISH_TIMEOUT``
        seconds (a socket call that hangs counts as failed after the same time).

        Raises:
            UnknownContractError: no contract of that name.
            PayloadValidationError: the payload breaks the contract (the message names the field).
            BrokerUnavailableError: the broker did not take the message in time.
        """
        contract = self.contract(task)
        if self.settings.broker_is_redis:
            # The envelope is rendered from the task's template, as publish_many renders it.
            body, level, extra = self._checked(contract, payload, priority, headers)
            task_id = task_id or str(uuid.uuid4())
            eta, expiry = eta_and_expiry(countdown, expires)
            with self._producer_span(contract, task_id=task_id) as trace_headers:
                item = self._writer(contract, MAX_PRIORITY - level).write(
                    task_id,
                    body,
                    kwargs_repr(body),
                    time.time(),
                    eta=eta,
                    expires=expiry,
                    headers={**extra, **trace_headers},
                )
                self._deliver(contract, [[item]])
            return TaskHandle(task_id, contract, self._results)
        message = self._encode(contract, payload, task_id, priority, countdown, expires, headers)
        with self._producer_span(contract, task_id=message.task_id) as trace_headers:
            message.headers.update(trace_headers)
            self._deliver(contract, [[message]])
        return TaskHandle(message.task_id, contract, self._results)

    def encode(
        self,
        task: str | TaskContract[Any, Any],
        payload: BaseModel | Mapping[str, Any],
        *,
        task_id: str | None = None,
        priority: int | None = None,
        countdown: float | None = None,
        expires: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> TaskMessage:
        """Validate and encode one task as :meth:`publish` would, without sending it.

        For messages sent later by :meth:`send` (a transactional outbox stores them in between).
        The encode is a ``<task> publish`` PRODUCER span, and its context goes in the message, so
        the task's run joins the caller's trace however late it is sent. The message is encoded
        for this publisher's broker kind (Redis serves priorities in reverse).

        Raises:
            UnknownContractError: no contract of that name.
            PayloadValidationError: the payload breaks the contract (the message names the field).
        """
        contract = self.contract(task)
        message = self._encode(contract, payload, task_id, priority, countdown, expires, headers)
        with self._producer_span(contract, task_id=message.task_id) as trace_headers:
            message.headers.update(trace_headers)
        return message

    def send(
        self,
        task: str | TaskContract[Any, Any],
        messages: list[TaskMessage],
        *,
        batch_size: int = 1000,
    ) -> None:
        """Send messages :meth:`encode` made, in order, through outages as :meth:`publish` does.

        Raises:
            UnknownContractError: no contract of that name.
            BrokerUnavailableError: the broker did not take every message in time; ``.sent``
                says how many of the first messages it did take.
        """
        batches = (messages[i : i + batch_size] for i in range(0, len(messages), batch_size))
        self._deliver(self.contract(task), batches)

    def handle(self, task: str | TaskContract[Any, ResultT], task_id: str) -> TaskHandle[ResultT]:
        """A handle on a task published earlier (by this process or any other), by its id."""
        return TaskHandle(task_id, self.contract(task), self._results)

    def publish_many(
        self,
        task: str | TaskContract[Any, ResultT],
        payloads: Iterable[BaseModel | Mapping[str, Any]],
        *,
        batch_size: int = 1000,
        progress: Callable[[int], None] | None = None,
        task_ids: Sequence[str] | None = None,
    ) -> PublishedTasks[ResultT]:
        """Validate and send many payloads in batches: one round trip (Redis) or one round of
        publisher confirms (RabbitMQ) per batch.

        Given a sequence (a list), every payload is validated before anything is sent: nothing
        is sent when any is invalid, and the error names its index and field. Given any other
        iterable (a generator), payloads are read, validated and sent a batch at a time, so
        memory stays flat however many there are; an invalid payload then stops the call before
        its batch, and the error's ``.sent`` says how many tasks went out before it.

        Returns the tasks in payload order (:class:`PublishedTasks`, a sequence of handles made
        on access: it holds no handle, and no id it made, so a million tasks cost it nothing).

        The call is one PRODUCER span, the parent of every task it sends: a span per message
        would cost about as much as sending the message. Through a broker outage the unsent
        batches are retried as :meth:`publish` retries (a batch cut off midway is sent again
        whole: its messages keep their task ids).

        ``task_ids``, one per payload, are the tasks' ids (new ones when omitted): a caller that
        must record the ids before they are sent chooses them.

        Raises:
            PayloadValidationError: a payload breaks the contract (``.sent``: see above).
            BrokerUnavailableError: the broker did not take every message in time; ``.sent``
                says how many of the first messages it did take.
            ValueError: ``task_ids`` does not hold one id per payload.
        """
        contract = self.contract(task)
        if isinstance(payloads, Sequence):
            if task_ids is not None and len(task_ids) != len(payloads):
                raise ValueError(f"{len(task_ids)} task ids for {len(payloads)} payloads")
            bodies = self._bodies(contract, payloads)
            batches: Iterable[list[bytes]] = (
                bodies[start : start + batch_size] for start in range(0, len(bodies), batch_size)
            )
        else:
            batches = self._streamed_bodies(contract, payloads, batch_size)
        id_source: Sequence[str] | bytes = new_id_key() if task_ids is None else task_ids
        with self._producer_span(contract) as trace_headers:
            wire = self._batch_writer(contract, trace_headers)
            published = 0

            def encoded() -> Iterator[list[TaskMessage] | list[Envelope]]:
                nonlocal published
                for bodies in batches:
                    if task_ids is not None and len(task_ids) < published + len(bodies):
                        raise ValueError(f"{len(task_ids)} task ids for more payloads")
                    end = published + len(bodies)
                    ids = (
                        [task_id_at(id_source, i) for i in range(published, end)]
                        if isinstance(id_source, bytes)
                        else id_source[published:end]
                    )
                    yield wire(ids, bodies)
                    published += len(bodies)

            try:
                self._deliver(contract, encoded(), progress=progress)
            except PayloadValidationError as exc:
                exc.sent = published
                raise
            # Known once a stream is read to its end: set as the span closes.
            span = trace.get_current_span()
            if span.is_recording():
                span.set_attribute("messaging.batch.message_count", published)
        return PublishedTasks(contract, id_source, published, self._results)

    def _bodies(
        self,
        contract: TaskContract[Any, Any],
        payloads: Sequence[BaseModel | Mapping[str, Any]],
        first: int = 0,
    ) -> list[bytes]:
        """Every payload validated and encoded as a message body, or the first one's problems."""
        serializer = contract.payload.__pydantic_serializer__
        bodies = []
        for index, model in enumerate(validate_payloads(contract, payloads, first=first)):
            body = body_from_json(serializer.to_json(model))
            self._check_size(contract, body, f"[{first + index}]")
            bodies.append(body)
        return bodies

    def _streamed_bodies(
        self,
        contract: TaskContract[Any, Any],
        payloads: Iterable[BaseModel | Mapping[str, Any]],
        batch_size: int,
    ) -> Iterator[list[bytes]]:
        first = 0
        iterator = iter(payloads)
        while chunk := list(itertools.islice(iterator, batch_size)):
            yield self._bodies(contract, chunk, first)
            first += len(chunk)

    def _batch_writer(
        self, contract: TaskContract[Any, Any], trace_headers: Mapping[str, str]
    ) -> Callable[[Sequence[str], list[bytes]], list[TaskMessage] | list[Envelope]]:
        """What turns a batch's ids and bodies into what this broker's send takes."""
        name, queue = contract.name, queue_name(contract, self.settings.namespace)
        if self.settings.broker_is_redis:
            writer = EnvelopeWriter(
                queue, name, priority=MAX_PRIORITY - contract.priority, headers=trace_headers
            )

            def envelopes(ids: Sequence[str], bodies: list[bytes]) -> list[Envelope]:
                now = time.time()
                return [
                    writer.write(task_id, body, kwargs_repr(body), now)
                    for task_id, body in zip(ids, bodies, strict=True)
                ]

            return envelopes

        def messages(ids: Sequence[str], bodies: list[bytes]) -> list[TaskMessage]:
            now = time.time()
            batch = []
            for task_id, body in zip(ids, bodies, strict=True):
                message = task_message(
                    name, task_id, body, priority=contract.priority, published_at=now
                )
                message.headers.update(trace_headers)
                batch.append(message)
            return batch

        return messages

    def _deliver(
        self,
        contract: TaskContract[Any, Any],
        batches: Iterable[Sequence[TaskMessage] | Sequence[Envelope]],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Send each batch, through outages, until a batch has waited ``publish_timeout``.

        A failed attempt leaves the connection and its channel unusable (Kombu's own retry then
        fails on the dead channel), so each retry starts from a new connection. The wait starts
        again with each batch sent: a long call is not cut short by an outage late in it.
        """
        sent = 0
        for batch in batches:
            deadline = time.monotonic() + self.settings.publish_timeout
            attempts = 0
            pause = _FIRST_RETRY_PAUSE
            while True:
                attempts += 1
                try:
                    with self._lock:
                        self._send_batch(contract, batch)
                    break
                except self._outage_errors() as exc:
                    self._reconnect()
                    _publish_retries().labels(
                        contract.name, queue_name(contract, self.settings.namespace)
                    ).inc()
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise BrokerUnavailableError(
                            redacted(self.settings.require_broker()),
                            self.settings.publish_timeout,
                            attempts,
                            sent,
                            " ".join(f"{type(exc).__name__}: {exc}".split()),
                        ) from exc
                    time.sleep(min(pause, remaining))
                    pause = min(pause * 2, _LAST_RETRY_PAUSE)
            sent += len(batch)
            if progress is not None:
                progress(len(batch))

    def _redis_client(self) -> Any:
        """Kombu's Redis client (its pool and its connection settings) pinned to one connection
        for the pushes: a command then skips the pool's checkout, whose lock, read of the socket
        for stale data and bookkeeping cost a fifth of a single publish. The publisher's lock
        keeps it to one command at a time; a pipeline still takes its connection from the pool."""
        if self._redis is None:
            self._redis = self._connection.default_channel.client.client()  # type: ignore[attr-defined]
        return self._redis

    def _release_redis_client(self) -> None:
        """Unpin the connection: the next push pins one of the current Kombu connection's pool
        (releasing a Kombu connection closes its pool's connections, pinned or not)."""
        client, self._redis = self._redis, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _outage_errors(self) -> tuple[type[BaseException], ...]:
        """What a lost or refused broker connection raises, on either transport."""
        connection = self._connection
        return (
            OperationalError,
            BatchPublishError,  # a pipeline cut off midway: sent again whole
            OSError,  # refused, reset, timed out
            *connection.connection_errors,
            *connection.recoverable_connection_errors,
            *connection.recoverable_channel_errors,
        )

    def _reconnect(self) -> None:
        """Drop the broken connection (without a goodbye it could block on) for a new, lazy one."""
        with self._lock:
            self._confirmed = None
            self._declared.clear()
            self._delayed.clear()
            self._release_redis_client()
            with contextlib.suppress(Exception):
                self._connection.collect(socket_timeout=0.1)
            # With several broker nodes, the next try goes to the next node.
            self._reconnects += 1
            self._connection = self._connect()

    @contextlib.contextmanager
    def _producer_span(
        self,
        contract: TaskContract[Any, Any],
        *,
        task_id: str | None = None,
    ) -> Iterator[dict[str, str]]:
        """A ``<task> publish`` PRODUCER span; yields the trace headers the messages must carry.

        With tracing off it is the API's no-op span and no headers, unless the caller's context
        came from elsewhere: that context is still passed on.
        """
        name = f"{contract.name} publish"
        with self._tracer.start_as_current_span(name, kind=SpanKind.PRODUCER) as span:
            if span.is_recording():
                span.set_attributes(self._messaging_attributes(contract, task_id))
            headers: dict[str, str] = {}
            if span.get_span_context().is_valid:
                inject(headers)
            yield headers

    def _messaging_attributes(
        self, contract: TaskContract[Any, Any], task_id: str | None
    ) -> dict[str, AttributeValue]:
        # OpenTelemetry messaging conventions; the destination is the namespaced queue.
        attributes: dict[str, AttributeValue] = {
            "messaging.system": "redis" if self.settings.broker_is_redis else "rabbitmq",
            "messaging.destination.name": queue_name(contract, self.settings.namespace),
            "messaging.operation": "publish",
            "messaging.operation.type": "send",
        }
        if task_id is not None:
            attributes["messaging.message.id"] = task_id
        return attributes

    def _checked(
        self,
        contract: TaskContract[Any, Any],
        payload: BaseModel | Mapping[str, Any],
        priority: int | None,
        headers: Mapping[str, str] | None,
    ) -> tuple[bytes, int, Mapping[str, str]]:
        """The payload validated and encoded as a message body, the priority level (0..9,
        contracts' order) and the caller's headers, each checked."""
        model = validate_payload(contract, payload)
        level = contract.priority if priority is None else priority
        if not 0 <= level <= MAX_PRIORITY:
            raise PayloadValidationError(
                contract.name, [Problem(("priority",), f"{level} is not within 0..9")]
            )
        body = body_from_json(contract.payload.__pydantic_serializer__.to_json(model))
        self._check_size(contract, body)
        for name in headers or ():
            if not name.startswith("x-") or name in _PROTOCOL_HEADERS:
                raise ValueError(f"header {name!r}: extra headers are x-… names of their own")
            if name.startswith(PREFIX) and name not in PUBLISHER_HEADERS:
                raise ValueError(f"header {name!r}: set by workers only")
        return body, level, headers or {}

    def _encode(
        self,
        contract: TaskContract[Any, Any],
        payload: BaseModel | Mapping[str, Any],
        task_id: str | None,
        priority: int | None,
        countdown: float | None = None,
        expires: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> TaskMessage:
        body, level, extra = self._checked(contract, payload, priority, headers)
        message = task_message(
            contract.name,
            task_id or str(uuid.uuid4()),
            body,
            # Contracts use AMQP's order (9 most urgent); Kombu's Redis lists serve 0 first.
            priority=MAX_PRIORITY - level if self.settings.broker_is_redis else level,
            countdown=countdown,
            expires=expires,
        )
        message.headers.update(extra)
        return message

    def _writer(self, contract: TaskContract[Any, Any], priority: int) -> EnvelopeWriter:
        """The envelope writer of single publishes of ``contract`` at Kombu's priority step
        ``priority``, made on first use and kept (a template costs several envelopes)."""
        key = (contract.name, priority)
        writer = self._writers.get(key)
        if writer is None:
            queue = queue_name(contract, self.settings.namespace)
            writer = self._writers[key] = EnvelopeWriter(queue, contract.name, priority=priority)
        return writer

    def _check_size(
        self, contract: TaskContract[Any, Any], body: bytes, item: str | None = None
    ) -> None:
        if len(body) > self.settings.max_payload_bytes:
            raise PayloadTooLargeError(
                contract.name,
                [
                    Problem(
                        (),
                        f"{len(body)} bytes, over the limit of "
                        f"{self.settings.max_payload_bytes} (TASKLANE_MAX_PAYLOAD_BYTES)",
                        item,
                    )
                ],
            )

    def _publish_holding_countdowns(
        self, contract: TaskContract[Any, Any], messages: Sequence[TaskMessage], queue: str
    ) -> None:
        """Send the batch in order; a message with a countdown goes to the broker's delay
        levels (:mod:`tasklane.wire.delayed`) instead of its queue, one run of equal routes at a
        time."""
        assert self._confirmed is not None
        now = datetime.now(UTC)
        runs: list[tuple[tuple[str, str], list[TaskMessage]]] = []
        for message in messages:
            route = delayed_route(message.headers, queue, now) or ("", queue)
            if runs and runs[-1][0] == route:
                runs[-1][1].append(message)
            else:
                runs.append((route, [message]))
        for (exchange, routing_key), run in runs:
            if exchange:
                self._declare_delayed(contract)
            self._confirmed.publish(
                run, routing_key, timeout=self.settings.publish_timeout, exchange=exchange
            )

    def _declare_delayed(self, contract: TaskContract[Any, Any]) -> None:
        """The delay levels, and their way to this contract's queue, once per connection."""
        name = queue_name(contract, self.settings.namespace)
        if name not in self._delayed:
            queue = work_queue(contract, self.settings.namespace, self._queue_options)
            declare_delayed_delivery(self._connection, [queue])
            self._delayed.add(name)

    def _declare(self, contract: TaskContract[Any, Any]) -> None:
        """Declare the contract's queue and DLQ through Kombu, once per connection.

        Declaring before the first publish means no message is dropped by RabbitMQ before any
        worker of the service has started.
        """
        name = queue_name(contract, self.settings.namespace)
        if name not in self._declared:
            channel = self._connection.default_channel
            for queue in (
                work_queue(contract, self.settings.namespace, self._queue_options),
                dead_letter_queue(contract, self.settings.namespace, self._queue_options),
            ):
                try:
                    queue.bind(channel).declare()
                except Exception as exc:
                    hint = queue_type_mismatch(exc, queue.name, self._queue_options)
                    if hint is None:
                        raise
                    raise SettingsError(hint) from exc
            self._declared.add(name)

    def _send_batch(
        self,
        contract: TaskContract[Any, Any],
        batch: Sequence[TaskMessage] | Sequence[Envelope],
    ) -> None:
        """Send one batch: one round trip on Redis, one round of confirms on RabbitMQ."""
        self._declare(contract)
        queue = queue_name(contract, self.settings.namespace)
        if self.settings.broker_is_redis:
            # Kombu's envelope, written here and pushed with Kombu's own Redis client.
            push(
                self._redis_client(),
                [m if isinstance(m, Envelope) else envelope(queue, m) for m in batch],
                replicas=self.settings.redis_wait_replicas,
                timeout=self.settings.publish_timeout,
            )
        else:
            # Every message of the batch sent, then the broker's acks of all awaited at once.
            if self._confirmed is None:
                self._confirmed = ConfirmedChannel(Producer(self._connection.default_channel))
            # Only Redis batches are envelopes (_batch_writer).
            messages = cast(Sequence[TaskMessage], batch)
            if self._queue_options.quorum:
                self._publish_holding_countdowns(contract, messages, queue)
            else:
                self._confirmed.publish(messages, queue, timeout=self.settings.publish_timeout)
        _published_counter().labels(contract.name, queue).inc(len(batch))


@functools.cache
def _published_counter() -> Counter:
    # Imported on the first send: prometheus-client loads an HTTP server module with it, which
    # ``import tasklane.publish`` promises not to.
    from tasklane.observability.counters import task_metrics

    return task_metrics().published


@functools.cache
def _publish_retries() -> Counter:
    from tasklane.observability.counters import task_metrics

    return task_metrics().publish_retries


def publish(
    task: str | TaskContract[Any, ResultT],
    payload: BaseModel | Mapping[str, Any],
    *,
    settings: Settings | None = None,
) -> TaskHandle[ResultT]:
    """Publish one task with a short-lived :class:`Publisher` (long-running code keeps one)."""
    publisher = Publisher(settings)
    try:
        return publisher.publish(task, payload)
    finally:
        publisher.close()
