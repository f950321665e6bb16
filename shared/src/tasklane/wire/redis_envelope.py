"""Kombu's Redis envelope, written directly: what ``Producer.publish`` pushes for one task message.

Kombu's virtual transport wraps a message in a JSON envelope (the body in base64, the headers,
the AMQP properties with a delivery tag and where it was routed) and ``LPUSH``-es it onto the
queue's list, or onto ``queue:N`` for priority step N. Building that envelope through
``Producer.publish`` costs about 22 µs a message here, more than a pipelined ``LPUSH`` of it
(docs/performance.md §2); the publisher writes it here instead, and only that: queues are still
declared through Kombu, and ``tests/integration/wire/test_redis_envelope_parity.py`` holds the
envelope against Kombu's own and has a plain Celery worker consume it.

:class:`EnvelopeWriter` renders the envelopes of many messages of one task from one template:
the constant part is encoded once and each message fills in its id, body, ``kwargsrepr``,
publish time and, when it has them, its ``eta``, ``expires`` and headers of its own. The template
is made by encoding :func:`tasklane.wire.protocol.task_headers` itself, so the headers stay
defined in one place.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import count, groupby
from operator import attrgetter
from typing import Any

from tasklane.wire.broker import PRIORITY_SEPARATOR
from tasklane.wire.headers import PUBLISHED_AT
from tasklane.wire.protocol import CONTENT_ENCODING, CONTENT_TYPE, TaskMessage, task_headers

#: Kombu's virtual transport always sends the body base64-encoded.
BODY_ENCODING = "base64"
#: AMQP's "persistent", which Kombu's ``Producer`` sets by default.
DELIVERY_MODE = 2

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_quote = json.encoder.encode_basestring_ascii
_NULL = "null"
#: What each message fills in of an :class:`EnvelopeWriter`'s template.
_SLOTS = ("id", "kwargsrepr", "body", "tag", "eta", "expires", "extra")


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message as Redis stores it: the list it goes onto and the JSON pushed there."""

    key: str
    data: bytes


def list_key(queue: str, priority: int) -> str:
    """The list of ``queue`` for Kombu's priority step ``priority`` (0 is the queue itself)."""
    return f"{queue}{PRIORITY_SEPARATOR}{priority}" if priority else queue


def _properties(queue: str, correlation_id: Any, priority: int, tag: str) -> dict[str, Any]:
    # The order Kombu's Producer and virtual channel give them.
    return {
        "correlation_id": correlation_id,
        "delivery_mode": DELIVERY_MODE,
        "priority": priority,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "body_encoding": BODY_ENCODING,
        "delivery_tag": tag,
    }


def _envelope(body: str, headers: Any, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "body": body,
        "content-encoding": CONTENT_ENCODING,
        "content-type": CONTENT_TYPE,
        "headers": headers,
        "properties": properties,
    }


def envelope(queue: str, message: TaskMessage) -> Envelope:
    """Kombu's envelope of one encoded message published to ``queue`` (a message of any shape:
    one made earlier by ``Publisher.encode``, Beat's, a replayed dead letter)."""
    properties = dict(message.properties)
    priority = int(properties.pop("priority", 0))
    correlation_id = properties.pop("correlation_id", message.task_id)
    record = _envelope(
        base64.b64encode(message.body).decode(),
        message.headers,
        {**_properties(queue, correlation_id, priority, str(uuid.uuid4())), **properties},
    )
    return Envelope(list_key(queue, priority), _ENCODER.encode(record).encode())


class EnvelopeWriter:
    """Renders the envelopes of many messages of one task, queue, priority and header set.

    Args:
        queue: the queue (namespaced) the messages go to.
        task: the task name.
        priority: Kombu's priority step on Redis (0 is served first).
        headers: headers every message carries besides the protocol's (trace context).
    """

    def __init__(
        self, queue: str, task: str, *, priority: int = 0, headers: Mapping[str, str] = {}
    ) -> None:
        self.key = list_key(queue, priority)
        # Tags only need to be unique among unacknowledged messages: a random prefix per writer
        # and a counter cost far less than a uuid4 a message.
        self._tag_prefix = f"{os.urandom(8).hex()}."
        self._tags = count()
        marks = {name: f"\x00{name}\x00" for name in _SLOTS}
        record = _envelope(
            marks["body"],
            {
                **task_headers(task, marks["id"], kwargsrepr=marks["kwargsrepr"], published_at=0),
                "eta": marks["eta"],
                "expires": marks["expires"],
                **headers,
                # Where a message's own headers go: after every other, as a dict update puts them.
                marks["extra"]: None,
            },
            _properties(queue, marks["id"], priority, marks["tag"]),
        )
        encoded = _ENCODER.encode(record).replace("%", "%%")
        published = f'"{PUBLISHED_AT}":0'
        if encoded.count(published) != 1:
            raise AssertionError("the protocol's headers lost their publish time")
        encoded = encoded.replace(published, f'"{PUBLISHED_AT}":%(published_at)r')
        encoded = encoded.replace(f",{json.dumps(marks['extra'])}:null", "%(extra)s")
        for name, mark in marks.items():
            # Text slots are quoted as JSON when rendered: any text may go in them.
            slot = f'"%({name})s"' if name in ("body", "tag") else f"%({name})s"
            encoded = encoded.replace(json.dumps(mark), slot)
        if any(f"%({name})" not in encoded for name in _SLOTS):
            raise AssertionError("a slot of the envelope template was not placed")
        self._template = encoded
        # Most messages have no eta, expiry or headers of their own: their template has fewer
        # slots, each a dict item less to fill a message.
        self._plain = (
            encoded.replace("%(eta)s", _NULL).replace("%(expires)s", _NULL).replace("%(extra)s", "")
        )

    def write(
        self,
        task_id: str,
        body: bytes,
        kwargsrepr: str,
        published_at: float,
        *,
        eta: str | None = None,
        expires: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> Envelope:
        """The envelope of one message (its body as :func:`~tasklane.wire.protocol.encode_body`
        makes it); ``eta`` and ``expires`` are the headers' ISO 8601 times, ``headers`` the
        message's own, after the writer's."""
        values: dict[str, Any] = {
            "id": _quote(task_id),
            "kwargsrepr": _quote(kwargsrepr),
            "body": base64.b64encode(body).decode(),
            "tag": f"{self._tag_prefix}{next(self._tags)}",
            "published_at": published_at,
        }
        if eta is None and expires is None and not headers:
            return Envelope(self.key, (self._plain % values).encode())
        values["eta"] = _NULL if eta is None else _quote(eta)
        values["expires"] = _NULL if expires is None else _quote(expires)
        values["extra"] = "".join(
            f",{_quote(name)}:{_ENCODER.encode(value)}" for name, value in (headers or {}).items()
        )
        return Envelope(self.key, (self._template % values).encode())


class NotReplicatedError(ConnectionError):
    """Fewer replicas than asked acknowledged a push within the time given (``WAIT``).

    A ``ConnectionError``: the publisher sends the batch again, as after an outage, so a task
    may arrive twice (once per idempotency key at the worker).
    """


def push(
    client: Any, envelopes: Sequence[Envelope], *, replicas: int = 0, timeout: float = 0.0
) -> None:
    """``LPUSH`` the envelopes onto their lists in one round trip, in order.

    One ``LPUSH`` carries every consecutive envelope of one list: Redis pushes its values in
    order, so the first is the first a consumer's ``RPOP`` takes, as with one ``LPUSH`` each.
    With ``replicas``, the same round trip ends with ``WAIT``: the push returns once that many
    replicas have the envelopes, so a failover to one of them cannot lose them.

    Raises:
        NotReplicatedError: fewer replicas acknowledged within ``timeout`` seconds.
    """
    groups = [
        (key, [e.data for e in group]) for key, group in groupby(envelopes, attrgetter("key"))
    ]
    if len(groups) == 1 and not replicas:
        (key, values), *_ = groups
        client.lpush(key, *values)
        return
    with client.pipeline(transaction=False) as pipeline:
        for key, values in groups:
            pipeline.lpush(key, *values)
        if replicas:
            pipeline.execute_command("WAIT", replicas, max(1, int(timeout * 1000)))
        answers = pipeline.execute()
    if replicas and int(answers[-1]) < replicas:
        raise NotReplicatedError(
            f"{answers[-1]} of {replicas} replicas acknowledged the push within {timeout:g}s"
        )
