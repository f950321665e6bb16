"""At-most-once execution per idempotency key, recorded in Redis.

A key moves from *claimed* (by one task id, with a TTL covering the hard time limit) to *done*
(with the stored result). A redelivery of the same task id takes its own claim over; any other
delivery with the same key (another task id, or a second publish of the same one) waits for the
claim to end and then gets the stored result.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import redis

# KEYS[1]: record key; ARGV: task id, claim TTL in ms, "1" when the delivery may take over a
# claim of its own task id (a redelivery). Returns {"done", result}, {"claimed", ""} or
# {"busy", owner}.
_BEGIN = """
local current = redis.call('GET', KEYS[1])
if current then
  local record = cjson.decode(current)
  if record.state == 'done' then return {'done', record.result} end
  if record.owner ~= ARGV[1] or ARGV[3] ~= '1' then return {'busy', record.owner} end
end
redis.call('SET', KEYS[1], cjson.encode({state='claimed', owner=ARGV[1]}), 'PX', ARGV[2])
return {'claimed', ''}
"""

# KEYS[1]; ARGV: task id. Delete the claim only when this task id still owns it.
_RELEASE = """
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current).owner == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Claim:
    """The outcome of :meth:`IdempotencyStore.begin`."""

    state: str  # "claimed", "done" or "busy"
    result: Any = None
    owner: str = ""


class IdempotencyStore:
    """Idempotency records of one namespace in Redis."""

    def __init__(self, client: redis.Redis, *, namespace: str = "", done_ttl: int = 7 * 86_400):
        self._client = client
        self._prefix = f"{namespace}tasklane:idempotency:"
        self._waits_prefix = f"{namespace}tasklane:busy-waits:"
        self._done_ttl = done_ttl
        self._begin = client.register_script(_BEGIN)
        self._release = client.register_script(_RELEASE)

    def key(self, task: str, value: str) -> str:
        """The Redis key of one task's idempotency value (hashed: values may be long)."""
        digest = hashlib.sha256(value.encode()).hexdigest()
        return f"{self._prefix}{task}:{digest}"

    def begin(
        self, task: str, value: str, task_id: str, claim_ttl: float, *, redelivered: bool = False
    ) -> Claim:
        """Claim the key for ``task_id``, or report that it is done or busy.

        A claim held by ``task_id`` itself is taken over only by a ``redelivered`` message (its
        earlier delivery died with the claim held); a second message of the same task id, such as
        an upstream's second publish after a lost confirm, waits like any other.
        """
        state, detail = self._begin(
            keys=[self.key(task, value)],
            args=[task_id, int(claim_ttl * 1000), "1" if redelivered else "0"],
        )
        state = state.decode() if isinstance(state, bytes) else state
        detail = detail.decode() if isinstance(detail, bytes) else detail
        if state == "done":
            return Claim("done", result=json.loads(detail))
        if state == "busy":
            return Claim("busy", owner=detail)
        return Claim("claimed")

    def complete(self, task: str, value: str, task_id: str, result: Any) -> None:
        """Record the result; later attempts with the same key return it instead of running."""
        record = json.dumps({"state": "done", "owner": task_id, "result": json.dumps(result)})
        self._client.set(self.key(task, value), record, ex=self._done_ttl)

    def count_wait(self, task_id: str) -> int:
        """Count one more wait of ``task_id`` for another delivery's claim; the total so far.

        The count lives here, not in a message header, so that no upstream can forge it.
        """
        key = f"{self._waits_prefix}{task_id}"
        with self._client.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, self._done_ttl)
            waits, _ = pipe.execute()
        return int(waits)

    def waits(self, task_id: str) -> int:
        """How many times ``task_id`` waited for another delivery's claim."""
        value = self._client.get(f"{self._waits_prefix}{task_id}")
        return int(value) if value is not None else 0

    def release(self, task: str, value: str, task_id: str) -> None:
        """Drop this task id's claim after a failure, so a retry or replay can run again."""
        self._release(keys=[self.key(task, value)], args=[task_id])
