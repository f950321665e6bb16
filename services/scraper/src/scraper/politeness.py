"""Per-host politeness shared by every worker: a minimum delay between request starts and a cap
on concurrent requests, both enforced atomically in Redis with the Redis server's clock.

Each host has two keys: a sorted set of lease ids scored by their expiry (so the lease of a
crashed worker frees itself) and the earliest time the next request may start. One Lua script
checks both and, when both allow, records the lease and moves the next start forward, so no two
workers can slip through between a check and its update. Waiters poll; there is no queue, so
there is no fairness among them.

Every request to a host takes a turn (:meth:`DomainGate.turn`): robots.txt and each redirect
hop as much as a page. Design: docs/scraper.md#politeness-redirects-and-robotstxt.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import redis

from tasklane.errors import TransientError

# Sleep between attempts while all slots are taken: a release is not announced, only seen.
_POLL_SECONDS = 0.05
# Suggested retry when the slots stay taken: they free on release, which cannot be predicted,
# and the earliest lease expiry (minutes away) is only a worst case.
_BUSY_RETRY_AFTER = 5.0

# Milliseconds from the Redis server's clock, the one clock all workers share. A start is
# allowed once ``now`` (rounded down) has reached it; a next start is counted from ``now_up``
# (rounded up), so it never falls short of the full delay by the part of a millisecond the
# rounding dropped.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_up = now
if tonumber(t[2]) % 1000 > 0 then now_up = now + 1 end
"""

# KEYS[1]: leases (zset id -> expiry ms), KEYS[2]: next allowed start (ms).
# ARGV: lease id, lease ms, max concurrency, min delay ms.
# Returns {1, 0, 0} when granted, else {0, ms until the delay has passed, ms until the
# earliest lease expires or 0 when a slot is free}.
_ACQUIRE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local delay_wait = 0
local next_start = tonumber(redis.call('GET', KEYS[2]))
if next_start and next_start > now then delay_wait = next_start - now end
local slot_wait = 0
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local earliest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  slot_wait = math.max(tonumber(earliest[2]) - now, 1)
end
if delay_wait > 0 or slot_wait > 0 then return {0, delay_wait, slot_wait} end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
-- The set lives as long as its latest lease, so an idle host leaves nothing behind.
local latest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(latest[2])))
local delay = tonumber(ARGV[4])
-- The key lives until its value has passed by the server's clock in whole milliseconds.
if delay > 0 then redis.call('SET', KEYS[2], now_up + delay, 'PX', now_up + delay - now) end
return {1, 0, 0}
"""
)

# KEYS[1]: next allowed start; ARGV[1]: ms. Only ever moves the next start later.
_DEFER = (
    _NOW
    + """
local target = now_up + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]))
if current and current >= target then return 0 end
redis.call('SET', KEYS[1], target, 'PX', target - now)
return 1
"""
)


def host_key(url: str) -> str:
    """The host whose turns a request to ``url`` takes: its host name, whatever the scheme and
    port (``http://h`` and ``https://h:8443`` share one), lower case, IDNA as sent (punycode)."""
    return (urlsplit(url).hostname or "").rstrip(".")


class Lease:
    """One held request slot of a host; release it when the request is done."""

    def __init__(self, client: redis.Redis, key: str, lease_id: str, host: str) -> None:
        self._client = client
        self._key = key
        self.id = lease_id
        self.host = host

    def release(self) -> None:
        """Free the slot (idempotent). An unreleased lease frees itself when it expires."""
        self._client.zrem(self._key, self.id)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class DomainGate:
    """Minimum delay between request starts and maximum concurrent requests, per host.

    Args:
        client: Redis shared by all workers.
        prefix: prepended to every Redis key.
        min_delay: seconds between the starts of two requests to one host.
        max_concurrency: requests to one host in flight at once, over all workers.
        lease_seconds: a lease not released by then (crashed worker) frees itself; keep it
            above the longest a request may take (the task's hard time limit).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "",
        min_delay: float,
        max_concurrency: int,
        lease_seconds: float = 300,
    ) -> None:
        if min_delay < 0 or max_concurrency < 1 or lease_seconds <= 0:
            raise ValueError("need min_delay >= 0, max_concurrency >= 1 and lease_seconds > 0")
        self._client = client
        self._prefix = f"{prefix}scraper:gate:"
        self._min_delay = min_delay
        self._max_concurrency = max_concurrency
        self._lease_ms = max(1, math.ceil(lease_seconds * 1000))
        self._acquire = client.register_script(_ACQUIRE)
        self._defer = client.register_script(_DEFER)

    def acquire(self, host: str, *, max_wait: float, min_delay: float | None = None) -> Lease:
        """Wait up to ``max_wait`` seconds for a slot of ``host`` and take it.

        Args:
            host: the host name (or whatever domain key the caller groups requests by).
            max_wait: seconds this call may sleep; a longer wait raises instead, so the task
                retries later rather than blocking a worker slot.
            min_delay: a per-call minimum delay, such as robots.txt's Crawl-delay; the larger
                of it and the configured one applies.

        Raises:
            TransientError: the host stays busy beyond ``max_wait``; ``retry_after`` estimates
                when to try again.
        """
        leases, next_start = self._keys(host)
        delay = math.ceil(self._delay(min_delay) * 1000)
        lease_id = uuid.uuid4().hex
        args: list[str | int] = [lease_id, self._lease_ms, self._max_concurrency, delay]
        deadline = time.monotonic() + max_wait
        while True:
            granted, delay_ms, slot_ms = self._acquire(keys=[leases, next_start], args=args)
            if granted:
                return Lease(self._client, leases, lease_id, host)
            delay_wait = delay_ms / 1000
            if slot_ms:
                sleep = max(delay_wait, _POLL_SECONDS)
                retry_after = max(delay_wait, min(slot_ms / 1000, _BUSY_RETRY_AFTER))
            else:
                sleep = retry_after = delay_wait
            if sleep > deadline - time.monotonic():
                raise TransientError(
                    f"host {host} is busy: retry in {retry_after:.2f} s", retry_after=retry_after
                )
            time.sleep(sleep)

    @contextmanager
    def turn(
        self, host: str, *, max_wait: float, min_delay: float | None = None
    ) -> Iterator[Lease]:
        """One request's turn at ``host``: :meth:`acquire`, make the request inside, and on the
        way out keep every worker from starting the next request for the delay, then release.

        The delay is thus counted from this request's end as well as from its start: requests
        reach the host at least the delay apart whatever happens between a slot being granted
        and the request arriving (a slow connect, a thread descheduled), and a slow response
        is not followed by the next request at once (Crawl-delay read as the pause between
        one response and the next request, as some search engines document it).

        Args and Raises: as :meth:`acquire`.
        """
        lease = self.acquire(host, max_wait=max_wait, min_delay=min_delay)
        try:
            yield lease
        finally:
            try:
                self.defer(host, self._delay(min_delay))
            finally:
                lease.release()

    def defer(self, host: str, seconds: float) -> None:
        """Let no worker start a request to ``host`` for ``seconds`` (429/503 Retry-After).

        A later deferral already in place is kept; an earlier one is pushed out.
        """
        if seconds > 0:
            self._defer(keys=[self._keys(host)[1]], args=[math.ceil(seconds * 1000)])

    def _delay(self, min_delay: float | None) -> float:
        return max(self._min_delay, min_delay or 0.0)  # a per-call delay never shortens ours

    def _keys(self, host: str) -> tuple[str, str]:
        name = host.strip().lower().rstrip(".")
        if not name:
            raise ValueError("empty host")
        # The hash tag keeps both keys in one Redis Cluster slot, as one script uses both.
        base = f"{self._prefix}{{{name}}}"
        return f"{base}:leases", f"{base}:next"
