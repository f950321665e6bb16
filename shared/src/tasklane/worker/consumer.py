"""A Celery consumer that dead-letters what stock Celery would drop.

Celery acknowledges (and so loses) messages it cannot decode, and rejects unknown tasks and
malformed messages, which on Redis also loses them. This consumer writes each of them to the DLQ of
the queue it came from, with the reason, before acknowledging; the worker keeps running.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

from celery import bootsteps, signals
from celery.exceptions import CPendingDeprecationWarning, InvalidTaskError, NotRegistered
from celery.utils.quorum_queues import detect_quorum_queues
from celery.worker.consumer import Consumer
from kombu.common import Broadcast
from kombu.exceptions import ContentDisallowed, DecodeError

from tasklane.observability.metrics import record_dead_letter
from tasklane.wire.deadletter import dead_letter_headers, send_to_dlq
from tasklane.wire.delayed import declare_delayed_delivery
from tasklane.wire.redis_transport import ENVELOPE_PROBLEM
from tasklane.wire.routing import dead_letter_queue_named, queue_type_mismatch

logger = logging.getLogger(__name__)


def body_problem(body: Any) -> str | None:
    """Why ``body`` is not a protocol v2 ``[args, kwargs, embed]`` list, or ``None`` if it is."""
    if not isinstance(body, list | tuple) or len(body) != 3:
        return "the body must be a JSON array [args, kwargs, embed]"
    args, kwargs, embed = body
    if not isinstance(args, list | tuple):
        return "args (body[0]) must be an array"
    if not isinstance(kwargs, dict):
        return "kwargs (body[1]) must be an object"
    if embed is not None and not isinstance(embed, dict):
        return "embed (body[2]) must be an object or null"
    return None


def _protocol_1_task(message: Any) -> Any:
    """The task a protocol 1 message names in its body; ``None`` when it names none."""
    try:
        body = message.decode()
    except (ContentDisallowed, DecodeError):
        return None  # Celery's own handler dead-letters it
    return body.get("task") if isinstance(body, dict) else None


#: Celery's step that declares the delay levels on each ``;``-separated broker URL in turn.
_CELERY_DELAYED_DELIVERY = "celery.worker.consumer.delayed_delivery:DelayedDelivery"


class ClusterDelayedDelivery(bootsteps.StartStopStep):  # type: ignore[misc]
    """Declare the delay levels of native delayed delivery once, on whichever node answers.

    Celery's own step takes each ``;``-separated broker URL for a broker of its own and declares
    the levels on every one, retrying a node that is down four times with sleeps between: after
    a RabbitMQ node died, the consumer's restart waited about 17 s on it before the event loop
    started, and no task ran meanwhile. The nodes of a cluster share their exchanges, queues and
    bindings, so one declaration over the app's connection (which fails over from node to node)
    does for all. Included where Celery would include its own: quorum queues on RabbitMQ.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)
    label = "Delayed delivery"

    def include_if(self, c: Consumer) -> bool:
        driver = c.app.connection_for_write().transport.driver_type
        return bool(detect_quorum_queues(c.app, driver)[0])

    def start(self, c: Consumer) -> None:
        queues = [q for q in c.app.amqp.queues.values() if not isinstance(q, Broadcast)]
        # A connection of its own, closed after: Kombu's declarations open a channel they never
        # close, which on the consumer's connection would pile up at each restart.
        with c.app.connection_for_write() as connection:
            try:
                # Each node once at least, one after another, before giving up.
                connection.ensure_connection(max_retries=max(3, 2 * len(connection.alt)))
                declare_delayed_delivery(connection, queues)
            except Exception as exc:
                # As Celery's step: a worker without the levels still runs tasks; retries
                # declare them again first (tasklane.worker.task).
                logger.warning("could not declare the delayed-delivery levels: %s", exc)


class DeadLetteringConsumer(Consumer):  # type: ignore[misc]
    """Stock consumer plus dead-lettering of undecodable, unknown and invalid messages."""

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        default_steps = [
            "tasklane.worker.consumer:ClusterDelayedDelivery"
            if step == _CELERY_DELAYED_DELIVERY
            else step
            for step in Consumer.Blueprint.default_steps
        ]

    def _consumed_from(self, message: Any) -> str:
        """The queue this worker took ``message`` from, whatever routing key it was sent with.

        RabbitMQ names the consumer, whose queue is known; on Redis the transport has set the
        delivery info to the list the message was popped from (tasklane.wire.redis_transport).
        """
        info = message.delivery_info or {}
        tag = info.get("consumer_tag")
        consumer = getattr(self, "task_consumer", None)
        if tag is not None and consumer is not None:
            # Kombu's Consumer keeps its consumer tags by queue name.
            for queue, active in getattr(consumer, "_active_tags", {}).items():
                if active == tag:
                    return str(queue)
        return str(info.get("routing_key") or "unknown")

    def _record_failure(self, message: Any, exc: BaseException) -> None:
        """Mark the task failed in the result backend when the message names its id, so that a
        caller waiting on it learns why instead of seeing PENDING forever."""
        headers = message.headers if isinstance(message.headers, dict) else {}
        task_id = headers.get("id")
        if not isinstance(task_id, str) or not task_id or self.app.conf.result_backend is None:
            return
        try:
            self.app.backend.mark_as_failure(task_id, exc)
        except Exception:
            logger.exception("could not record the failure of task %s", task_id)

    def _dead_letter(self, message: Any, reason: str, exc: BaseException | None) -> None:
        queue = self._consumed_from(message)
        headers = dead_letter_headers(
            dict(message.headers or {}),
            queue=queue,
            reason=reason,
            error_type=type(exc).__name__ if exc else "UnknownMessage",
            error=str(exc) if exc else "message is not a Celery task message",
            attempts=1,
            worker=self.hostname,
        )
        try:
            with self.app.producer_or_acquire() as producer:
                send_to_dlq(
                    producer,
                    queue=queue,
                    namespace=self.app.settings.namespace,
                    options=self.app.queue_options,
                    body=message.body,
                    content_type=message.content_type,
                    content_encoding=message.content_encoding,
                    headers=headers,
                    properties=dict(message.properties or {}),
                )
        except Exception:
            # Could not store it: hand it back to the broker rather than lose it.
            logger.exception("could not dead-letter a %s message; rejecting it", reason)
            message.reject_log_error(logger, self.connection_errors)
            return
        message.ack_log_error(logger, self.connection_errors)
        if self.app.metrics is not None:
            task = str((message.headers or {}).get("task") or "")
            # Only names this worker knows become labels: a stray message must not add series.
            known = task if task in self.app.tasks else "unknown"
            record_dead_letter(known, queue, reason)

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        """Redis: leave the running tasks' messages in Redis's unacknowledged set.

        Kombu would put them back in their queues when it closes the lost connection, where
        another worker could take them while they still run here; and it tries that on a
        transport it has already collected, which raises and stops the whole worker. They come
        back after the visibility timeout instead, when the tasks have finished.
        """
        if self.app.settings.broker_is_redis and self.connection is not None:
            transport = self.connection._transport  # the live one only: never create one here
            for channel in getattr(transport, "channels", ()):
                channel.do_restore = False
        with warnings.catch_warnings():
            # Redis workers keep running tasks on purpose (tasklane.worker.app): Celery's
            # warning that its default will change would be logged at every outage.
            warnings.simplefilter("ignore", CPendingDeprecationWarning)
            super().on_connection_error_after_connected(exc)

    def create_task_handler(self, promise: Any = None) -> Callable[[Any], None]:
        """Check a protocol v2 body's shape before Celery's strategy sees it; count the message.

        Celery unpacks ``[args, kwargs, embed]`` without checking it: a short list stops the whole
        worker, and a non-list leaves the task pending forever. Decoding here costs nothing extra,
        as Kombu caches the decoded body for the request.

        With metrics on, a message for a task this worker knows is counted as received here, as
        it is taken from its queue (``tasklane_tasks_received_total``): Celery's
        ``task_received`` signal would cost each message a dispatch in the busiest process.
        """
        handler = (
            super().create_task_handler()
            if promise is None
            else super().create_task_handler(promise)
        )
        metrics = getattr(self.app, "metrics", None)  # a TasklaneApp's recorder, if metrics are on
        received = None if metrics is None else metrics.received_counts.add

        def on_task_received(message: Any) -> None:
            problem = (message.properties or {}).get(ENVELOPE_PROBLEM)
            if problem is not None:
                return self.on_invalid_task(None, message, InvalidTaskError(str(problem)))
            headers = message.headers
            if isinstance(headers, dict) and "task" in headers:
                try:
                    problem = body_problem(message.decode())
                except (ContentDisallowed, DecodeError) as exc:
                    return self.on_invalid_task(None, message, exc)
                if problem is not None:
                    return self.on_invalid_task(None, message, InvalidTaskError(problem))
                name = headers["task"]
            else:
                name = _protocol_1_task(message) if isinstance(headers, dict) else None
            if received is not None and isinstance(name, str) and name in self.strategies:
                info = message.delivery_info or {}
                received((name, str(info.get("routing_key") or "unknown")))
            return handler(message)  # type: ignore[no-any-return]

        return on_task_received

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """Undecodable body or refused content type (pickle): dead-letter, never deserialize."""
        logger.error("refused message with content type %r: %s", message.content_type, exc)
        self._dead_letter(message, "undecodable", exc)
        self._record_failure(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        """A message without task headers."""
        logger.error("message without a task name: %r", message.headers)
        self._dead_letter(message, "unknown-message", None)
        self._record_failure(message, InvalidTaskError("message is not a Celery task message"))
        signals.task_rejected.send(sender=self, message=message, exc=None)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        """A task name this worker does not implement: dead-letter and mark the result failed."""
        headers = message.headers or {}
        name, task_id = headers.get("task"), headers.get("id")
        logger.error("unknown task %r (id %s)", name, task_id)
        self._dead_letter(message, "unknown-task", NotRegistered(name))
        self._record_failure(message, NotRegistered(name))
        signals.task_unknown.send(sender=self, message=message, exc=exc, name=name, id=task_id)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        """A message whose body cannot be decoded (refused content type) or is not a task."""
        logger.error("invalid task message: %s", exc)
        undecodable = isinstance(exc, ContentDisallowed | DecodeError)
        self._dead_letter(message, "undecodable" if undecodable else "invalid-message", exc)
        self._record_failure(message, exc)
        signals.task_rejected.send(sender=self, message=message, exc=exc)


class DeclareDeadLetterQueues(bootsteps.StartStopStep):  # type: ignore[misc]
    """Declare the service's DLQs at start-up, so RabbitMQ's dead-lettering has a destination
    even before the first failure."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, c: Consumer) -> None:
        namespace, options = c.app.settings.namespace, c.app.queue_options
        dead_letter_queues = [
            dead_letter_queue_named(n, namespace, options) for n in c.app.dead_letter_queues
        ]
        with c.app.connection_for_write() as connection:
            channel = connection.default_channel
            # The work queues too (Celery declares them as well): a queue of another type than
            # TASKLANE_RABBITMQ_QUEUE_TYPE is then named with what to do, not only refused.
            for queue in [*c.app.conf.task_queues, *dead_letter_queues]:
                try:
                    queue.bind(channel).declare()
                except Exception as exc:
                    hint = queue_type_mismatch(exc, queue.name, options)
                    if hint is not None:
                        logger.critical("%s", hint)
                    raise
