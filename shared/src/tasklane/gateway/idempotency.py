"""``Idempotency-Key`` records in Redis: a retried POST gets the first answer, nothing more is sent.

Keys ``<namespace>gateway:idem:<publisher>:<key>`` hold the request's fingerprint while the first
request is in flight, then its answer for the window. Design: docs/gateway.md#idempotency.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis

#: The longest key accepted; printable ASCII only (draft-ietf-httpapi-idempotency-key-header).
MAX_KEY_CHARS = 255

# Claim the key, or return what it holds: one round trip either way.
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""
# Forget a claim that is still ours (a failed request must not block its retry).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def valid_key(value: str) -> str | None:
    """The key a header value names (surrounding quotes dropped), or None when it is invalid."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if not 1 <= len(value) <= MAX_KEY_CHARS or not all(" " <= c <= "~" for c in value):
        return None
    return value


def fingerprint(task: str, route: str, body: Any) -> str:
    """SHA-256 of the route and the canonical JSON of the body: key order and spacing ignored."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{route} {task}\n{canonical}".encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    """What a request with a key may do: go on (``claimed``), replay an answer, or be refused."""

    outcome: Literal["claimed", "replay", "reused", "in-flight"]
    redis_key: str
    record: str = ""
    answer: dict[str, Any] | None = None


class IdempotencyStore:
    """The records of one namespace in the state Redis."""

    def __init__(self, client: Redis, namespace: str, window: int, claim_ttl: int) -> None:
        self._client = client
        self._prefix = f"{namespace}gateway:idem:"
        self._window = window
        # A gateway that dies mid-request leaves its claim: it lapses after this many seconds.
        self._claim_ttl = max(1, min(claim_ttl, window))
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)

    async def claim(self, publisher: str, key: str, print_: str) -> Claim:
        """Claim ``key`` for a request of fingerprint ``print_``, or say why not."""
        redis_key = f"{self._prefix}{publisher}:{key}"
        record = json.dumps({"fingerprint": print_, "claim": uuid.uuid4().hex})
        held = await self._claim(keys=[redis_key], args=[record, self._claim_ttl])
        if held is None:
            return Claim("claimed", redis_key, record)
        stored = json.loads(held)
        if stored.get("fingerprint") != print_:
            return Claim("reused", redis_key)
        if "answer" not in stored:
            return Claim("in-flight", redis_key)
        return Claim("replay", redis_key, answer=stored["answer"])

    async def complete(self, claim: Claim, print_: str, answer: dict[str, Any]) -> None:
        """Keep ``answer`` for the window, for the retries of this request."""
        record = json.dumps({"fingerprint": print_, "answer": answer})
        await self._client.set(claim.redis_key, record, ex=self._window)

    async def release(self, claim: Claim) -> None:
        """Forget the claim of a request that published nothing, so that it may be retried."""
        await self._release(keys=[claim.redis_key], args=[claim.record])
