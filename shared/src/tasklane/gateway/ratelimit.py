"""Per-publisher token buckets in Redis, shared by every gateway replica: one script call each.

The same call records which task each new id is (for ``GET /v1/tasks/{id}``) when the request
may go on, so a publish costs the gateway one Redis round trip.

Design: docs/gateway.md#rate-limits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

# The bucket is a hash {tokens, ts}; Redis' own clock keeps replicas in agreement. A request
# costing more than the whole bucket (a large batch) passes when the bucket is full and leaves
# it in debt, so large batches are possible and the average rate still holds.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
local allowed = 0
if tokens >= math.min(cost, burst) then
  tokens = tokens - cost
  allowed = 1
else
  wait = (math.min(cost, burst) - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
  'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst + math.max(0, -tokens)) / rate * 1000) + 1000)
if allowed == 1 then
  for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[4], 'EX', ARGV[5]) end
end
return {allowed, string.format('%.6f', wait)}
"""


@dataclass(frozen=True)
class Decision:
    """Whether a request may go on, and if not, whole seconds until it could (>= 1)."""

    allowed: bool
    retry_after: int


class RateLimiter:
    """Token buckets under ``<namespace>gateway:rate:<publisher>``."""

    def __init__(self, client: Redis, namespace: str, task_ttl: int) -> None:
        self._script = client.register_script(_TOKEN_BUCKET)
        self._prefix = f"{namespace}gateway:rate:"
        self._task_prefix = f"{namespace}gateway:task:"
        self._task_ttl = task_ttl

    def task_key(self, task_id: str) -> str:
        """Where the task name of an id published through the gateway is kept."""
        return self._task_prefix + task_id

    async def take(
        self, publisher: str, rate: float, burst: int, task: str = "", ids: Sequence[str] = ()
    ) -> Decision:
        """Take a token per id from ``publisher``'s bucket if it holds enough; when it does,
        record each id as a task of ``task`` (kept as long as results are)."""
        allowed, wait = await self._script(
            keys=[self._prefix + publisher, *map(self.task_key, ids)],
            args=[repr(float(rate)), burst, max(1, len(ids)), task, self._task_ttl],
        )
        if int(allowed):
            return Decision(True, 0)
        return Decision(False, max(1, math.ceil(float(wait))))
