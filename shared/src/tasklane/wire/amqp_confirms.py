"""Publisher confirms on RabbitMQ, waited for a batch at a time.

With ``confirm_publish`` Kombu's pyamqp channel waits for the broker's ack after every single
message (``amqp.Channel.basic_publish_confirm``), and Kombu's ``Producer.batch()`` does nothing
for pyamqp: a batch costs one network round trip per message. :class:`ConfirmedChannel` sends a
whole batch, then waits once for the acks, which RabbitMQ sends for many messages at a time
(``multiple=True``). Every message is still confirmed before :meth:`ConfirmedChannel.publish`
returns.

The messages are built by Kombu (``prepare_message``) and framed by py-amqp's own frame writer,
into a buffer written to the socket 64 KiB at a time rather than one write per message (py-amqp's
``basic_publish`` also polls the socket before every message). On a 2-core host that shares its
CPUs with RabbitMQ that halves the publisher's CPU per message and lowers the broker's: see
``bench/publish_rabbitmq.py``.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from struct import pack
from typing import Any

from amqp import Message, spec  # type: ignore[import-untyped]
from amqp.exceptions import (  # type: ignore[import-untyped]
    MessageNacked,
    RecoverableConnectionError,
)
from amqp.method_framing import frame_writer  # type: ignore[import-untyped]
from amqp.serialization import _write_item, dumps  # type: ignore[import-untyped]
from kombu.messaging import Producer

from tasklane.wire.protocol import CONTENT_ENCODING, CONTENT_TYPE, TaskMessage


class PublishNackedError(MessageNacked):  # type: ignore[misc]
    """The broker refused (nacked) a message of a batch.

    ``confirmed`` is how many of the batch's first messages the broker did take, in order: a
    caller may count them as sent and send the rest again (messages after the refused one may
    have been taken too, so a resend can duplicate them).
    """

    def __init__(self, confirmed: int, total: int) -> None:
        super().__init__(
            f"the broker refused message {confirmed + 1} of {total}; "
            f"the first {confirmed} were confirmed"
        )
        self.confirmed = confirmed
        self.total = total


class PropertyEncoder:
    """py-amqp's encoding of a message's properties, with each header entry encoded once a batch.

    py-amqp encodes the properties and header table of every message in Python, key by key: on
    RabbitMQ that was two thirds of ``publish_many``'s CPU a message. The messages of a batch
    share most header entries (the task name, the origin, every ``None``), so an entry is encoded
    by py-amqp's own ``_write_item`` the first time and copied after; the bytes are py-amqp's.
    ``tests/integration/publish/test_amqp_confirms.py`` holds them against py-amqp's encoder.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[Any, ...], bytes] = {}

    def clear(self) -> None:
        """Forget the entries (at the end of a batch: ids and times are never seen again)."""
        self._entries.clear()

    def encode(self, properties: dict[str, Any]) -> bytes | None:
        """The property flags and list of ``properties``, or ``None`` for py-amqp to encode."""
        if not properties.keys() <= _ENCODED:
            return None
        flags, parts = 0, list[bytes]()
        for name, kind, flag in _PROPERTIES:
            value = properties.get(name)
            if value is None:
                continue
            flags |= flag
            if kind == "F":
                try:
                    table = self._table(value)
                except ValueError:
                    return None  # a value no AMQP type holds: py-amqp raises its own error
                parts += (pack(">I", len(table)), table)
            elif kind == "o":
                parts.append(pack("B", value))
            else:  # shortstr
                text = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
                parts += (pack("B", len(text)), text)
        return pack(">H", flags) + b"".join(parts)

    def _table(self, table: dict[str, Any]) -> bytes:
        entries = self._entries
        parts = []
        for name, value in table.items():
            # The type is in the key: True, 1 and 1.0 are equal keys of a dict. A list of
            # scalars (Celery's ``timelimit``) is keyed by its items and their types.
            kind = type(value)
            if kind in _SCALARS:
                key: tuple[Any, ...] | None = (name, kind, value)
            elif kind is list and all(type(item) in _SCALARS for item in value):
                key = (name, list, *((type(item), item) for item in value))
            else:
                key = None
            entry = entries.get(key) if key is not None else None
            if entry is None:
                encoded = name.encode("utf-8", "surrogatepass")
                out = [pack("B", len(encoded)), encoded]
                _write_item(value, out.append, [])
                entry = b"".join(out)
                if key is not None:
                    entries[key] = entry
            parts.append(entry)
        return b"".join(parts)


class _PreEncoded(Message):  # type: ignore[misc]
    """A message whose properties :class:`PropertyEncoder` encoded (when it could)."""

    encoded: bytes | None = None

    def _serialize_properties(self) -> bytes:
        if self.encoded is not None:
            return self.encoded
        return super()._serialize_properties()  # type: ignore[no-any-return]


#: Basic properties in py-amqp's order, with their kinds and flag bits (one flag word: 14 of them).
_PROPERTIES = [
    (name, kind, 1 << (15 - index)) for index, (name, kind) in enumerate(Message.PROPERTIES)
]
#: The properties :class:`PropertyEncoder` writes; a message with others goes to py-amqp.
_ENCODED = frozenset(
    ("content_type", "content_encoding", "application_headers", "delivery_mode", "priority",
     "correlation_id")
)  # fmt: skip
_SCALARS = (str, int, float, bool, type(None))


class ConfirmTimeoutError(RecoverableConnectionError):  # type: ignore[misc]
    """The broker did not take or confirm every message in time: an outage, as a lost connection
    is."""


#: Frames are written to the socket in chunks of about this many bytes.
_WRITE_BYTES = 64 * 1024


class _FrameBuffer(bytearray):
    """Where py-amqp's frame writer writes, in place of the socket."""

    def write(self, data: bytes | memoryview) -> None:
        self.extend(data)  # py-amqp reuses the memory it passes: copied here


class _Confirms:
    """The confirm state of one channel: the sequence numbers it gave out and the acks it got.

    RabbitMQ numbers the messages published on a channel in confirm mode 1, 2, 3… and acks or
    nacks by those numbers, a single one or every one up to it (``multiple``).
    """

    def __init__(self, channel: Any) -> None:
        self.next_tag = 1
        #: Every tag up to this one is resolved (acked or nacked).
        self.resolved_through = 0
        #: Tags past ``resolved_through`` resolved one at a time (acks may come out of order).
        self.resolved_singles: set[int] = set()
        self.nacked: list[int] = []
        #: Ack and nack frames received: the tests and benchmark see how batched they are.
        self.frames = 0
        channel.events["basic_ack"].add(self.on_ack)
        channel.events["basic_nack"].add(self.on_nack)

    def on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self.frames += 1
        self._resolve(delivery_tag, multiple)

    def on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self.frames += 1
        # A multiple nack covers every tag not resolved yet: the first is the lowest refused.
        self.nacked.append(self.resolved_through + 1 if multiple else delivery_tag)
        self._resolve(delivery_tag, multiple)

    def _resolve(self, delivery_tag: int, multiple: bool) -> None:
        if multiple:
            self.resolved_through = max(self.resolved_through, delivery_tag)
        else:
            self.resolved_singles.add(delivery_tag)
        # Single acks next to the resolved range join it, so checking "all resolved" stays cheap.
        while self.resolved_singles:
            tag = min(self.resolved_singles)
            if tag > self.resolved_through + 1:
                break
            self.resolved_singles.remove(tag)
            self.resolved_through = max(self.resolved_through, tag)


# One state per channel, however many ConfirmedChannels are made on it: the numbering is the
# channel's. A channel that is gone takes its state with it.
_STATES: weakref.WeakKeyDictionary[Any, _Confirms] = weakref.WeakKeyDictionary()


class ConfirmedChannel:
    """Publishes on one Kombu pyamqp channel in confirm mode and waits for the broker's acks of
    a whole batch at once (the broker acks with multiple=True).

    It exists because Kombu and py-amqp confirm each message synchronously, one round trip per
    message (see the module's docstring).

    Every publish on the channel must go through this class (single messages as a batch of one):
    the broker numbers all of them, and a message sent past it would shift the count. Not
    thread-safe: one publish at a time per channel.

    Raises:
        ValueError: the channel is already in confirm mode with messages this class did not count.
    """

    def __init__(self, producer: Producer) -> None:
        self.producer = producer
        self.channel: Any = producer.channel
        state = _STATES.get(self.channel)
        # py-amqp clears _confirm_selected when it reopens a channel (its numbering restarts).
        if state is None or not self.channel._confirm_selected:
            if self.channel._confirm_selected:
                raise ValueError("the channel was put in confirm mode without ConfirmedChannel")
            self.channel.confirm_select()
            # The flag also stops py-amqp's per-message confirm path from selecting again.
            self.channel._confirm_selected = True
            if state is not None:
                self.channel.events["basic_ack"].discard(state.on_ack)
                self.channel.events["basic_nack"].discard(state.on_nack)
            state = _Confirms(self.channel)
            _STATES[self.channel] = state
        self._state = state
        self._frames = _FrameBuffer()
        self._encoder = PropertyEncoder()
        self._write_frame = frame_writer(self.channel.connection, self._frames)

    @property
    def ack_frames(self) -> int:
        """How many ack and nack frames the broker has sent on this channel so far."""
        return self._state.frames

    def publish(
        self,
        messages: Sequence[TaskMessage],
        routing_key: str,
        *,
        timeout: float,
        exchange: str = "",
    ) -> None:
        """Send every message, then wait until the broker has acked all of them.

        Messages go to ``exchange`` (the default exchange unless given) with the AMQP content of
        Kombu's ``Producer.publish`` as Tasklane calls it (persistent, JSON, the message's
        headers and properties).

        Raises:
            PublishNackedError: the broker refused a message; ``.confirmed`` counts the batch's
                first messages it took.
            ConfirmTimeoutError: not every ack came within ``timeout`` seconds (a
                ``RecoverableConnectionError``: the connection should be dropped).
            Exception: the connection's own errors, as they come.
        """
        if not messages:
            return
        deadline = time.monotonic() + timeout
        state = self._state
        first = state.next_tag
        try:
            self._send(messages, exchange, routing_key, timeout)
        finally:
            self._encoder.clear()
        last = state.next_tag - 1
        connection = self.channel.connection
        while state.resolved_through < last:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConfirmTimeoutError(self._waiting(first, last, timeout))
            try:
                connection.drain_events(timeout=remaining)
            except TimeoutError:
                raise ConfirmTimeoutError(self._waiting(first, last, timeout)) from None
        refused = [tag for tag in state.nacked if first <= tag <= last]
        # Nacks of earlier batches were reported then.
        state.nacked = [tag for tag in state.nacked if tag > last]
        if refused:
            raise PublishNackedError(min(refused) - first, len(messages))

    def _send(
        self, messages: Sequence[TaskMessage], exchange: str, routing_key: str, timeout: float
    ) -> None:
        """Write a basic.publish of every message; each is numbered once it is on the socket."""
        connection = self.channel.connection
        if connection is None:
            raise RecoverableConnectionError("publish: connection closed")
        channel_id = self.channel.channel_id
        # Not mandatory, not immediate: the same for every message of the batch.
        arguments = dumps("Bssbb", (0, exchange, routing_key, False, False))
        frames, buffered = self._frames, 0
        try:
            with connection.transport.having_timeout(timeout):
                for sent, message in enumerate(messages, 1):
                    self._write_frame(
                        1, channel_id, spec.Basic.Publish, arguments, self._prepare(message)
                    )
                    buffered += 1
                    if len(frames) >= _WRITE_BYTES or sent == len(messages):
                        connection.transport.write(frames)
                        frames.clear()
                        self._state.next_tag += buffered
                        buffered = 0
        except TimeoutError:
            raise ConfirmTimeoutError(f"publish: not sent within {timeout:g}s") from None
        finally:
            # Frames of messages that an error kept from the socket: never sent, never numbered.
            frames.clear()

    def _prepare(self, message: TaskMessage) -> Any:
        """The message as Kombu's ``Producer.publish`` makes it for Tasklane's arguments."""
        properties = dict(message.properties)
        # As Producer.publish takes them: priority apart, the other properties as they are.
        priority = properties.pop("priority", 0)
        properties["delivery_mode"] = 2
        prepared = self.channel.prepare_message(
            message.body,
            priority,
            CONTENT_TYPE,
            CONTENT_ENCODING,
            message.headers,
            properties,
            _Message=_PreEncoded,
        )
        prepared.encoded = self._encoder.encode(prepared.properties)
        return prepared

    def _waiting(self, first: int, last: int, timeout: float) -> str:
        state = self._state
        resolved = max(state.resolved_through, first - 1) - (first - 1)
        resolved += sum(1 for tag in state.resolved_singles if first <= tag <= last)
        unconfirmed = last - first + 1 - resolved
        return f"{unconfirmed} of {last - first + 1} messages not confirmed within {timeout:g}s"


__all__ = ["ConfirmTimeoutError", "ConfirmedChannel", "PublishNackedError"]
