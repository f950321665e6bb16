"""Kombu's Redis transport, with every message a worker pops checked before Kombu reads it.

On Redis a message leaves its list when a worker pops it (BRPOP). Kombu then reads the envelope's
``properties.delivery_tag`` and ``properties.delivery_info``; when an upstream wrote the envelope
without them, that raises before the message is held anywhere, and the message is lost. Here each
envelope is completed first: what can be derived (a delivery tag, where it came from) is filled
in, and an envelope that cannot be read becomes a message the consumer dead-letters with the
problem (:data:`ENVELOPE_PROBLEM`).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from queue import Empty
from typing import Any

from kombu.transport import redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.exceptions import ConnectionError as RedisConnectionError

#: Property set on an envelope that could not be read as sent; its value says why.
ENVELOPE_PROBLEM = "x-tasklane-envelope-problem"


def complete_envelope(raw: Any, queue: str) -> dict[str, Any]:
    """``raw`` as an envelope Kombu can read, with ``queue`` as where it was consumed from.

    The delivery info always names ``queue``: Kombu restores an unacknowledged message to where
    its delivery info points, and an upstream's typo there would move it to a queue nobody reads.
    """
    problem = _envelope_problem(raw)
    if problem is not None:
        # Kept whole as text, so the dead letter shows exactly what was sent.
        headers = raw.get("headers") if isinstance(raw, dict) else None
        raw = {
            "body": json.dumps(raw),
            "content-type": "application/json",
            "content-encoding": "utf-8",
            # Kept when readable: the task id lets the consumer record the failure for callers.
            "headers": headers if isinstance(headers, dict) else {},
            "properties": {ENVELOPE_PROBLEM: problem},
        }
    properties = raw["properties"]
    properties.setdefault("delivery_tag", str(uuid.uuid4()))
    properties["delivery_info"] = {"exchange": "", "routing_key": queue}
    if raw.get("headers") is None:
        raw["headers"] = {}
    return raw  # type: ignore[no-any-return]


def _envelope_problem(raw: Any) -> str | None:
    """Why Kombu could not read ``raw`` as a message envelope, or ``None``."""
    if not isinstance(raw, dict):
        return f"the Redis envelope must be a JSON object, got {type(raw).__name__}"
    if not isinstance(raw.get("properties"), dict):
        return "the Redis envelope has no properties object"
    if not isinstance(raw.get("headers", {}), dict | None):
        return "the Redis envelope's headers must be an object"
    body = raw.get("body")
    if body is not None and not isinstance(body, str):
        return "the Redis envelope's body must be a string"
    for name in ("content-type", "content-encoding"):
        if not isinstance(raw.get(name), str | None):
            return f"the Redis envelope's {name} must be a string"
    encoding = raw["properties"].get("body_encoding")
    if encoding == "base64" and body:
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return "the Redis envelope's body is not valid base64 (body_encoding)"
    elif encoding not in (None, "base64"):
        return f"the Redis envelope's body_encoding {encoding!r} is not base64"
    return None


def _parse_item(item: bytes) -> Any:
    """The popped list item as JSON, or an unreadable envelope carrying its bytes."""
    try:
        return loads(bytes_to_str(item))  # as Kombu parses it (its JSON types included)
    except ValueError:  # not UTF-8 or not JSON
        return {
            "body": base64.b64encode(item).decode(),
            "content-type": "application/octet-stream",
            "content-encoding": "binary",
            "headers": {},
            "properties": {
                "body_encoding": "base64",
                ENVELOPE_PROBLEM: "the Redis list item is not JSON",
            },
        }


class Channel(redis.Channel):
    """A Redis channel whose acknowledgements fail as connection errors once it was closed.

    A task that outlives its worker's lost broker connection is acknowledged on the old channel
    when it ends. Kombu would raise an ``AttributeError`` there, which stops the whole worker; a
    connection error is logged instead, and the message, still in Redis's unacknowledged set,
    comes back after the visibility timeout (the task's idempotency record then answers it).
    """

    def _brpop_read(self, **options: Any) -> bool:
        """Kombu's BRPOP read, except that an item that is not JSON becomes a dead letter.

        Kombu parses the popped item in the same statement that delivers it, so an item that is
        not JSON would be gone before any hook sees it; this is that method with the parse
        guarded (Kombu 5.7).
        """
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()  # reconnect on the next read
                raise
            if not reply:
                raise Empty()
            dest, item = reply
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            self.connection._deliver(_parse_item(item), dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()  # type: ignore[no-untyped-call]

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        self._require_open()
        super().basic_ack(delivery_tag, multiple=multiple)  # type: ignore[no-untyped-call]

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        self._require_open()
        super().basic_reject(delivery_tag, requeue=requeue)  # type: ignore[no-untyped-call]

    def _require_open(self) -> None:
        if self.connection is None:
            raise RedisConnectionError(
                "channel closed with its lost connection; the message stays unacknowledged"
            )


class Transport(redis.Transport):
    """The Redis transport whose deliveries pass :func:`complete_envelope` first."""

    Channel = Channel

    def _deliver(self, message: Any, queue: str) -> None:
        super()._deliver(complete_envelope(message, queue), queue)  # type: ignore[no-untyped-call]
