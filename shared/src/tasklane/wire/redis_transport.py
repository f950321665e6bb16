"""Kombu's Redis transport, with every message recorded as it is taken and checked before use.

**Taking a message.** Kombu pops a message with BRPOP and records it as unacknowledged in a
second command, once the reply is read. A worker killed in between (the reply can wait in its
socket while every pool slot is busy) loses the message. Here one Lua script pops the message
and records it in Kombu's unacknowledged set in the same step (:data:`CLAIM`), so it is either
still in its list or restored after the visibility timeout. Lua cannot block, and Redis has no
blocking command that waits on several lists without taking from them, so an empty claim is
followed by a wait that takes nothing: ``BLMOVE`` of one list onto itself, the list the last
message came from (a queue's traffic mostly has one priority, so that list wakes the worker at
once); a message on another list is claimed within :data:`WAIT_SECONDS`.

**Reading it.** Kombu reads the envelope's ``properties.delivery_tag`` and
``properties.delivery_info``; when an upstream wrote the envelope without them, that raises
before the message is held anywhere. Here each envelope is completed first: what can be derived
(a delivery tag, where it came from) is filled in, and an envelope that cannot be read becomes a
message the consumer dead-letters with the problem (:data:`ENVELOPE_PROBLEM`).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import redis, virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.exceptions import ConnectionError as RedisConnectionError

#: Property set on an envelope that could not be read as sent; its value says why.
ENVELOPE_PROBLEM = "x-tasklane-envelope-problem"
#: Longest wait before the lists other than the first are looked at again while all are empty.
WAIT_SECONDS = 0.1
#: Key of an unacknowledged record that holds a list item that is not JSON, as hex.
RAW_ITEM = "x-tasklane-raw-item-hex"

#: Pops the first item of the lists (KEYS[4:], in order) and records it as unacknowledged in
#: the same step, as Kombu's ``QoS.append`` would: ``[envelope, "", queue]`` in the hash KEYS[1]
#: under its delivery tag, the time in the index KEYS[2]. An item without a string tag gets one
#: from the counter KEYS[3]; one that is not JSON is kept as hex (:data:`RAW_ITEM`), so a
#: restore can always read the record. Returns ``{queue, item, tag, list index}`` or false.
CLAIM = """
local now = redis.call('TIME')
for i = 4, #KEYS do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    local queue = ARGV[i - 3]
    local ok, envelope = pcall(cjson.decode, item)
    local tag, record
    if ok and type(envelope) == 'table' then
      local properties = envelope['properties']
      if type(properties) == 'table' and type(properties['delivery_tag']) == 'string'
          and properties['delivery_tag'] ~= '' then
        tag = properties['delivery_tag']
      end
      record = '[' .. item .. ',"",' .. cjson.encode(queue) .. ']'
    else
      local hex = item:gsub('.', function(c) return string.format('%02x', c:byte()) end)
      record = cjson.encode({{[ARGV[#ARGV]] = hex}, '', queue})
    end
    if not tag then
      tag = 'tasklane-' .. now[1] .. '-' .. redis.call('INCR', KEYS[3])
    end
    redis.call('ZADD', KEYS[2], tonumber(now[1]) + tonumber(now[2]) / 1000000, tag)
    redis.call('HSET', KEYS[1], tag, record)
    return {queue, item, tag, i - 4}
  end
end
return false
"""


def complete_envelope(raw: Any, queue: str, delivery_tag: str | None = None) -> dict[str, Any]:
    """``raw`` as an envelope Kombu can read, with ``queue`` as where it was consumed from.

    The delivery info always names ``queue``: Kombu restores an unacknowledged message to where
    its delivery info points, and an upstream's typo there would move it to a queue nobody reads.
    ``delivery_tag``, when given, is the tag the message was recorded under as it was taken.
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
    if delivery_tag is not None:
        properties["delivery_tag"] = delivery_tag
    properties.setdefault("delivery_tag", str(uuid.uuid4()))
    # Kombu marks a restored message redelivered (in its headers, and in the delivery info when
    # the envelope had one); the worker lets only a redelivery take its own idempotency claim over.
    earlier = properties.get("delivery_info")
    redelivered = (isinstance(earlier, dict) and earlier.get("redelivered") is True) or (
        isinstance(raw.get("headers"), dict) and raw["headers"].get("redelivered") is True
    )
    properties["delivery_info"] = {"exchange": "", "routing_key": queue}
    if redelivered:
        properties["delivery_info"]["redelivered"] = True
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


class QoS(redis.QoS):
    """Kombu's Redis acknowledgement emulation, minus the record a claim already wrote."""

    def append(self, message: Any, delivery_tag: Any) -> None:
        claimed: set[Any] = self.channel.claimed_tags
        if delivery_tag in claimed:
            claimed.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)  # type: ignore[no-untyped-call]


class Channel(redis.Channel):
    """A Redis channel that takes messages with :data:`CLAIM`, and fails closed acknowledgements.

    A task that outlives its worker's lost broker connection is acknowledged on the old channel
    when it ends. Kombu would raise an ``AttributeError`` there, which stops the whole worker; a
    connection error is logged instead, and the message, still in Redis's unacknowledged set,
    comes back after the visibility timeout (the task's idempotency record then answers it).
    """

    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: Tags recorded by a claim and not yet handed to the QoS.
        self.claimed_tags: set[Any] = set()
        #: Whether the last claim found every list empty: the next command waits instead.
        self._lists_empty = False
        self._waiting = False
        #: The list the last message was claimed from, where an idle channel waits.
        self._last_list: str | None = None
        self._sent_lists: list[str] = []
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys = [
            self._q_for_pri(queue, pri)  # type: ignore[no-untyped-call]
            for pri in self.priority_steps
            for queue in queues
        ]
        names = [queue for pri in self.priority_steps for queue in queues]
        prefix = self.global_keyprefix or ""
        self._waiting = self._lists_empty
        if self._waiting:
            wait = min(timeout or self.brpop_timeout or WAIT_SECONDS, WAIT_SECONDS)
            last = self._last_list
            watched = prefix + (last if last is not None and last in keys else keys[0])
            command: list[Any] = ["BLMOVE", watched, watched, "RIGHT", "RIGHT", wait]
        else:
            records = [prefix + self.unacked_key, prefix + self.unacked_index_key]
            counter = prefix + self.unacked_key + "_tag_seq"
            listed = [prefix + key for key in keys]
            self._sent_lists = keys
            command = ["EVAL", CLAIM, 3 + len(keys), *records, counter, *listed, *names, RAW_ITEM]
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]
        self.client.connection.send_command(*command)

    def _brpop_read(self, **options: Any) -> bool:
        """The reply to :meth:`_brpop_start`: a claimed message delivered, or ``Empty``.

        Kombu parses the popped item in the same statement that delivers it, so an item that is
        not JSON would be gone before any hook sees it; here it becomes a dead letter.
        """
        try:
            command = "BLMOVE" if self._waiting else "EVAL"
            try:
                reply = self.client.parse_response(self.client.connection, command, **options)
            except self.connection_errors:
                self.client.connection.disconnect()  # reconnect on the next read
                raise
            if self._waiting:
                # Something arrived, or the wait is over: claim (and look at every list) next.
                self._lists_empty = False
                raise Empty()
            if not reply:
                self._lists_empty = True
                raise Empty()
            queue, item, tag, index = reply
            queue, tag = bytes_to_str(queue), bytes_to_str(tag)
            self._last_list = self._sent_lists[index]
            self._queue_cycle.rotate(queue)
            self.claimed_tags.add(tag)
            envelope = complete_envelope(_parse_item(item), queue, delivery_tag=tag)
            # Completed here with its tag: Kombu's delivery, not this transport's second pass
            # (which validates a base64 body all over again).
            redis.Transport._deliver(self.connection, envelope, queue)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()  # type: ignore[no-untyped-call]

    def _do_restore_message(
        self, payload: Any, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        """Back to its list: also an item recorded as hex, or an envelope Kombu cannot mark.

        Kombu marks a restored envelope as redelivered and drops (logging) one whose headers or
        properties are not objects; what an upstream sent goes back as it was instead.
        """
        push = pipe.lpush if leftmost else pipe.rpush
        if isinstance(payload, dict) and set(payload) == {RAW_ITEM}:
            push(routing_key, bytes.fromhex(payload[RAW_ITEM]))
        elif _markable(payload):
            super()._do_restore_message(  # type: ignore[no-untyped-call]
                payload, exchange, routing_key, pipe, leftmost
            )
        else:
            for queue in self._lookup(exchange, routing_key):  # type: ignore[no-untyped-call]
                push(queue, json.dumps(payload))

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


def _markable(payload: Any) -> bool:
    """Whether Kombu's restore can mark ``payload`` redelivered without raising."""
    if not isinstance(payload, dict):
        return False
    properties = payload.get("properties", {})
    return (
        isinstance(payload.get("headers", {}), dict)
        and isinstance(properties, dict)
        and isinstance(properties.get("delivery_info", {}), dict)
    )


class Transport(redis.Transport):
    """The Redis transport whose deliveries pass :func:`complete_envelope` first.

    Messages a :class:`Channel` claims are completed as they are read; this covers the others
    (fanout deliveries).
    """

    Channel = Channel

    def _deliver(self, message: Any, queue: str) -> None:
        super()._deliver(complete_envelope(message, queue), queue)  # type: ignore[no-untyped-call]


class SentinelChannel(Channel, redis.SentinelChannel):
    """:class:`Channel` on the Redis master the Sentinels name (``sentinel://`` broker URLs).

    Kombu's Sentinel channel supplies the connections (the master asked of the Sentinels again
    after a failover), this module's channel the claim of each message as it is read.
    """


class SentinelTransport(Transport):
    """:class:`Transport` for Redis behind Sentinel."""

    Channel = SentinelChannel
    default_port = 26379  # type: ignore[assignment]
