"""Dead-letter queues: write a failed message with its reason, then list, replay or purge."""

from __future__ import annotations

import base64
import codecs
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from kombu.connection import Connection
from kombu.entity import Queue
from kombu.messaging import Producer

from tasklane.wire.headers import (
    ATTEMPTS,
    DEAD_LETTER_HEADERS,
    ERROR,
    ERROR_TYPE,
    FAILED_AT,
    ORIGINAL_QUEUE,
    PUBLISHED_AT,
    REASON,
    WORKER,
)
from tasklane.wire.protocol import CONTENT_ENCODING, CONTENT_TYPE
from tasklane.wire.queues import depths
from tasklane.wire.routing import (
    CLASSIC,
    DLQ_SUFFIX,
    QueueOptions,
    dead_letter_exchange,
    dead_letter_queue_named,
    dlq_name,
)

MAX_ERROR_CHARS = 2000

#: Longest wait for a quorum DLQ to take back the letters a peek handed back.
SETTLE_SECONDS = 5.0
#: Most letters a peek of a quorum DLQ reads to put them in the order they failed.
QUORUM_PEEK_CAP = 10_000


def _refuse_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which JSON (RFC 8259) does not have: such a body is
    # shown as text, so `dlq show --json` never prints a bare NaN.
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True)
class DeadLetter:
    """Why a message was dead-lettered, and the message itself."""

    queue: str
    reason: str
    error_type: str
    error: str
    attempts: int
    body: bytes
    content_type: str
    content_encoding: str
    headers: dict[str, Any]
    properties: dict[str, Any]

    #: How many leading bytes of a body that is not shown as text a preview holds.
    PREVIEW_BYTES: ClassVar[int] = 128
    #: Content-encoding labels Kombu reads as raw bytes, never as text (its SKIP_DECODE).
    BINARY_LABELS: ClassVar[frozenset[str]] = frozenset({"binary", "ascii-8bit"})

    @property
    def task(self) -> str | None:
        """The task name, when the message carried one."""
        value = self.headers.get("task")
        return str(value) if value is not None else None

    @property
    def task_id(self) -> str | None:
        """The task id, when the message carried one."""
        value = self.headers.get("id")
        return str(value) if value is not None else None

    @property
    def failed_at(self) -> str:
        """When the message was dead-lettered (ISO 8601, UTC)."""
        return str(self.headers.get(FAILED_AT, ""))

    @property
    def published_at(self) -> str:
        """When the message was first published (ISO 8601, UTC), when known."""
        value = self.headers.get(PUBLISHED_AT)
        if not isinstance(value, int | float):
            return ""
        return datetime.fromtimestamp(value, UTC).isoformat()

    def text_encoding(self) -> str | None:
        """The text codec the ``content-encoding`` label names, or ``None`` for bytes.

        No label means UTF-8, as for Kombu. ``None`` for "binary", unknown labels and Python
        codecs that are not text encodings (base64, zlib, hex, rot13, ...): ``bytes.decode`` of
        those fails, or would transform the bytes instead of reading them.
        """
        label = str(self.content_encoding or "").strip() or "utf-8"
        if label.lower() in self.BINARY_LABELS:
            return None
        try:
            info = codecs.lookup(label)
        except (LookupError, ValueError):
            return None
        if not getattr(info, "_is_text_encoding", True):
            return None
        return info.name

    def _text(self) -> tuple[str | None, str]:
        """The body as text, or ``None`` and why it is not shown as text."""
        encoding = self.text_encoding()
        if encoding is None:
            return None, f"content encoding {self.content_encoding!r} is not a text encoding"
        try:
            text = self.body.decode(encoding)
            # Lone surrogates (utf-16, unicode_escape) could be neither printed nor sent on.
            text.encode("utf-8")
        except Exception:  # a codec may fail its own way on foreign bytes: all mean "not text"
            return None, f"not valid {encoding} text"
        return text, ""

    def decoded(self) -> tuple[str, Any, str]:
        """The body's format, value and a note; never unpickled, never replaced characters.

        Format "json" (value: the decoded JSON), "text" (value: the text; the note says when a
        JSON body is not valid JSON), "binary" (value ``None``; the note says why) or "empty".
        """
        if not self.body:
            return "empty", None, ""
        text, note = self._text()
        if text is None:
            return "binary", None, note
        if self.content_type == CONTENT_TYPE:
            try:
                return "json", json.loads(text, parse_constant=_refuse_constant), ""
            except (ValueError, RecursionError):
                return "text", text, "not valid JSON"
        return "text", text, ""

    def payload(self) -> Any:
        """The decoded body when it is JSON, the text when its label is a text encoding it
        decodes under, else the raw bytes (never unpickled)."""
        form, value, _ = self.decoded()
        return value if form in ("json", "text") else self.body

    def body_view(self, preview: int | None = None) -> dict[str, Any]:
        """The body described for display, JSON-safe, with a bounded preview of other bytes.

        Keys: ``body_format`` (see :meth:`decoded`), ``body`` (the JSON value or text, else
        ``None``), ``body_bytes`` (the size), ``body_base64`` (the first ``preview`` bytes,
        :attr:`PREVIEW_BYTES` by default, of a binary or empty body, else ``None``),
        ``body_preview_bytes`` (how many bytes that is), ``body_truncated`` and ``body_note``.
        """
        limit = self.PREVIEW_BYTES if preview is None else max(preview, 0)
        form, value, note = self.decoded()
        raw = form in ("binary", "empty")
        shown = self.body[:limit] if raw else b""
        return {
            "body_format": form,
            "body": value,
            "body_bytes": len(self.body),
            "body_base64": base64.b64encode(shown).decode("ascii") if raw else None,
            "body_preview_bytes": len(shown),
            "body_truncated": raw and len(shown) < len(self.body),
            "body_note": note,
        }


def dead_letter_headers(
    original: dict[str, Any] | None,
    *,
    queue: str,
    reason: str,
    error_type: str,
    error: str,
    attempts: int,
    worker: str = "",
) -> dict[str, Any]:
    """The original headers plus Tasklane's dead-letter reason headers."""
    headers = dict(original or {})
    headers.update(
        {
            REASON: reason,
            ERROR_TYPE: error_type,
            ERROR: error[:MAX_ERROR_CHARS],
            ATTEMPTS: attempts,
            FAILED_AT: datetime.now(UTC).isoformat(),
            ORIGINAL_QUEUE: queue,
            WORKER: worker,
        }
    )
    headers.setdefault(PUBLISHED_AT, time.time())
    return headers


def send_to_dlq(
    producer: Producer,
    *,
    queue: str,
    namespace: str,
    body: bytes | str,
    content_type: str | None,
    content_encoding: str | None,
    headers: dict[str, Any],
    properties: dict[str, Any] | None = None,
    options: QueueOptions = CLASSIC,
) -> None:
    """Publish one dead letter to the DLQ of ``queue`` (declared on the way)."""
    dlq = dead_letter_queue_named(dlq_name(queue), namespace, options)
    props = {k: v for k, v in (properties or {}).items() if k in ("correlation_id", "reply_to")}
    producer.publish(
        body,
        exchange=dead_letter_exchange(namespace),
        routing_key=dlq.routing_key,
        declare=[dlq],
        content_type=content_type or "application/octet-stream",
        content_encoding=content_encoding or "binary",
        headers=headers,
        delivery_mode=2,
        retry=True,
        **props,
    )


def _from_message(queue: str, message: Any) -> DeadLetter:
    headers = dict(message.headers or {})
    raw = message.body
    body = raw if isinstance(raw, bytes) else str(raw).encode()
    return DeadLetter(
        queue=str(headers.get(ORIGINAL_QUEUE, queue.removesuffix(DLQ_SUFFIX))),
        reason=str(headers.get(REASON, "rejected by the broker")),
        error_type=str(headers.get(ERROR_TYPE, "")),
        error=str(headers.get(ERROR, _x_death(headers))),
        attempts=int(headers.get(ATTEMPTS, 0) or 0),
        body=body,
        content_type=message.content_type or "",
        content_encoding=message.content_encoding or "",
        headers=headers,
        properties=dict(message.properties or {}),
    )


def _x_death_time(headers: dict[str, Any]) -> str:
    """When RabbitMQ dead-lettered a message itself (ISO 8601, UTC), from ``x-death``."""
    deaths = headers.get("x-death") or []
    when = deaths[0].get("time") if deaths and isinstance(deaths[0], dict) else None
    if isinstance(when, datetime):
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()
    return ""


def _x_death(headers: dict[str, Any]) -> str:
    # RabbitMQ's native dead-lettering records why in x-death; show it when Tasklane wrote nothing.
    deaths = headers.get("x-death") or []
    if deaths and isinstance(deaths[0], dict):
        return f"{deaths[0].get('reason', '')} from {deaths[0].get('queue', '')}"
    return ""


@contextmanager
def _raw_channel(connection: Connection) -> Iterator[Any]:
    """A channel that hands out bodies as the bytes that were sent.

    py-amqp decodes a body whose ``content-encoding`` names a Python text codec (``latin-1``)
    into text first; read back as UTF-8, those would not be the bytes that were sent.
    """
    with connection.channel() as channel:
        if hasattr(channel, "auto_decode"):
            channel.auto_decode = False
        yield channel


class DeadLetterQueue:
    """Operations on one DLQ over a Kombu connection."""

    def __init__(
        self,
        connection: Connection,
        dlq: str,
        namespace: str = "",
        options: QueueOptions = CLASSIC,
    ) -> None:
        self.connection = connection
        self.name = dlq
        self.namespace = namespace
        self.options = options

    def _queue(self) -> Queue:
        return dead_letter_queue_named(self.name, self.namespace, self.options)

    def depth(self) -> int:
        """Messages waiting in the DLQ (without creating it)."""
        return depths(self.connection, [self.name])[0]

    def peek(self, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead letters, oldest first, left in the queue."""
        with _raw_channel(self.connection) as channel:
            if self.connection.transport.driver_type == "redis":
                # Kombu pushes on the left and consumes from the right: the right end is oldest.
                raw = channel.client.lrange(self.name, -limit, -1)
                return [
                    _from_message(self.name, channel.Message(json.loads(item), channel=channel))
                    for item in reversed(raw)
                ]
            queue = self._queue().bind(channel)
            queue.declare()
            waiting = queue.queue_declare(passive=True).message_count
            # A quorum queue puts a letter handed back behind the others, so its order is that
            # of earlier reads, not of failures: read them all (up to a cap) and sort by when
            # each failed. A classic queue keeps its order: the first ``limit`` are the oldest.
            wanted = min(max(waiting, limit), QUORUM_PEEK_CAP) if self.options.quorum else limit
            letters: list[DeadLetter] = []
            while len(letters) < wanted:
                message = queue.get(no_ack=False, accept=None)
                if message is None:
                    break
                letters.append(_from_message(self.name, message))
        if self.options.quorum and letters:
            # Handed back when the channel closed; a moment later on a quorum queue.
            self._settle(waiting)
            letters.sort(key=lambda letter: letter.failed_at or _x_death_time(letter.headers))
        return letters[:limit]

    def _settle(self, waiting: int) -> None:
        """Until the queue holds ``waiting`` messages again (every peeked one back), 5 s at most."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while depths(self.connection, [self.name])[0] < waiting:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)

    def drain(self, limit: int | None = None) -> Iterator[tuple[DeadLetter, Any]]:
        """Take dead letters one by one; the caller acks each message it has handled."""
        with _raw_channel(self.connection) as channel:
            queue = self._queue().bind(channel)
            queue.declare()
            taken = 0
            while limit is None or taken < limit:
                message = queue.get(no_ack=False, accept=None)
                if message is None:
                    return
                taken += 1
                yield _from_message(self.name, message), message

    def replay(self, target: Queue, limit: int | None = None) -> int:
        """Send dead letters back to ``target``, reason headers removed, retries reset.

        The target is declared first: RabbitMQ would drop a message sent to a missing queue, and
        each dead letter is acknowledged right after it was sent.
        """
        count = 0
        with self.connection.channel() as out_channel:
            target.bind(out_channel).declare()
            producer = Producer(out_channel)
            for letter, message in self.drain(limit):
                headers = {k: v for k, v in letter.headers.items() if k not in DEAD_LETTER_HEADERS}
                headers.pop("x-death", None)
                if "retries" in headers:
                    headers["retries"] = 0
                producer.publish(
                    letter.body,
                    exchange="",
                    routing_key=target.name,
                    content_type=letter.content_type or CONTENT_TYPE,
                    content_encoding=letter.content_encoding or CONTENT_ENCODING,
                    headers=headers,
                    delivery_mode=2,
                    correlation_id=letter.properties.get("correlation_id"),
                    priority=letter.properties.get("priority", 0) or 0,
                )
                message.ack()
                count += 1
        return count

    def purge(self) -> int:
        """Delete every dead letter; returns how many there were."""
        with _raw_channel(self.connection) as channel:
            queue = self._queue().bind(channel)
            queue.declare()
            return int(queue.purge() or 0)
