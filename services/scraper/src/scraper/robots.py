"""robots.txt rules (RFC 9309), fetched once per origin and shared by every worker through Redis.

A refused URL is :class:`RobotsDisallowedError` from :meth:`RobotsCache.check`; an unreachable
robots.txt disallows everything for :data:`UNREACHABLE_TTL`.
Design: docs/scraper.md#reading-robotstxt.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import redis
from protego import Protego

from tasklane.errors import PermanentError

UNREACHABLE_TTL = 60
"""Seconds an unreachable robots.txt (5xx, 429, network error) disallows its whole origin."""

_DEFAULT_PORTS = {"http": 80, "https": 443}
_ALLOW_ALL, _DISALLOW_ALL, _RULES = "allow", "disallow", "rules"
# The product token leads the User-Agent header ("TasklaneBot/1.0 (+https://...)"); matching
# the whole header would let a group named after any word in it (such as "https") apply.
_PRODUCT_TOKEN = re.compile(r"[A-Za-z_-]+")
# Bounds one fetch (a server trickling bytes defeats per-read timeouts) and, as the lock's
# lifetime, how long other workers wait for it before fetching themselves.
_FETCH_SECONDS = 30.0
_POLL_SECONDS = 0.05
_LOCAL_ENTRIES = 256  # parsed rule sets kept per process; robots.txt may be up to max_bytes

# KEYS[1]: fetch lock; ARGV[1]: our token. Delete the lock only if it is still ours.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RobotsDisallowedError(PermanentError):
    """robots.txt forbids fetching ``url`` for ``user_agent`` (or could not be fetched)."""

    def __init__(self, url: str, user_agent: str) -> None:
        # The message is the only argument: result backends store and show an error's args.
        # The query is left out: it may carry secrets, and the path is what robots.txt rules.
        shown = str(httpx.URL(url).copy_with(query=None, fragment=None))
        super().__init__(f"robots.txt disallows {shown} for user agent {user_agent!r}")
        self.url = url
        self.user_agent = user_agent

    def __reduce__(self) -> tuple[type[RobotsDisallowedError], tuple[str, str]]:
        return type(self), (self.url, self.user_agent)


@dataclass(frozen=True)
class _Rules:
    outcome: str  # _ALLOW_ALL, _DISALLOW_ALL or _RULES
    parser: Protego | None = None


class RobotsCache:
    """robots.txt of every origin, fetched through ``http`` and shared through Redis.

    Args:
        client: Redis shared by all workers.
        http: client for fetching robots.txt (a guarded client; its timeout bounds a fetch).
        user_agent: our User-Agent header; its product token selects the robots.txt group.
        prefix: prepended to every Redis key.
        ttl: seconds a fetched robots.txt is reused.
        max_bytes: robots.txt beyond this size is cut (RFC 9309 asks for at least 500 KiB).
    """

    def __init__(
        self,
        client: redis.Redis,
        http: httpx.Client,
        *,
        user_agent: str,
        prefix: str = "",
        ttl: int = 3600,
        max_bytes: int = 512 * 1024,
    ) -> None:
        token = _PRODUCT_TOKEN.match(user_agent.strip())
        if token is None:
            raise ValueError(f"user agent {user_agent!r} does not start with a product token")
        if ttl <= 0 or max_bytes <= 0:
            raise ValueError("ttl and max_bytes must be positive")
        self._redis = client
        self._http = http
        self._user_agent = user_agent
        self._token = token.group()
        self._prefix = f"{prefix}scraper:robots:"
        self._ttl = ttl
        self._max_bytes = max_bytes
        self._unlock = client.register_script(_UNLOCK)
        self._local: dict[str, tuple[float, _Rules]] = {}  # origin -> (monotonic deadline, rules)
        self._lock = threading.Lock()

    def allowed(self, url: str) -> bool:
        """Whether robots.txt of ``url``'s origin lets our user agent fetch it.

        Raises:
            PermanentError: ``url`` is not an absolute http(s) URL; ``UnsafeURLError`` from the
                guarded client when the origin may not be contacted at all.
        """
        rules = self._rules(url)
        if rules.parser is None:
            return rules.outcome == _ALLOW_ALL
        return rules.parser.can_fetch(url, self._token)

    def crawl_delay(self, url: str) -> float | None:
        """The Crawl-delay (seconds) robots.txt of ``url``'s origin asks of us, if any."""
        rules = self._rules(url)
        return None if rules.parser is None else rules.parser.crawl_delay(self._token)

    def check(self, url: str) -> None:
        """Raise :class:`RobotsDisallowedError` unless :meth:`allowed`."""
        if not self.allowed(url):
            raise RobotsDisallowedError(url, self._user_agent)

    def key(self, url: str) -> str:
        """The Redis key holding robots.txt of ``url``'s origin (hashed: hosts may be long)."""
        return self._key(_origin(url))

    def _key(self, origin: str) -> str:
        return self._prefix + hashlib.sha256(origin.encode()).hexdigest()

    def _rules(self, url: str) -> _Rules:
        origin = _origin(url)
        now = time.monotonic()
        with self._lock:
            cached = self._local.get(origin)
        if cached is not None and cached[0] > now:
            return cached[1]
        rules, ttl = self._load(origin)
        with self._lock:
            self._local.pop(origin, None)
            if len(self._local) >= _LOCAL_ENTRIES:
                self._local.pop(next(iter(self._local)))  # the oldest insertion
            self._local[origin] = (now + ttl, rules)
        return rules

    def _load(self, origin: str) -> tuple[_Rules, float]:
        """Rules and their remaining lifetime: from Redis, else fetched by one worker."""
        key = self._key(origin)
        lock = f"{key}:fetching"
        token = uuid.uuid4().hex
        while True:
            stored = self._read(key)
            if stored is not None:
                return stored
            # One worker fetches; the others poll for its result. If it dies, its lock expires.
            if self._redis.set(lock, token, nx=True, px=int(_FETCH_SECONDS * 1000)):
                try:
                    record, ttl = self._fetch(origin)
                    self._redis.set(key, json.dumps(record), ex=ttl)
                finally:
                    self._unlock(keys=[lock], args=[token])
                return _parse(record), ttl
            time.sleep(_POLL_SECONDS)

    def _read(self, key: str) -> tuple[_Rules, float] | None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        raw, pttl = pipe.execute()
        if raw is None:
            return None
        # A negative PTTL means the key expired between the two commands: use it this once.
        return _parse(json.loads(raw)), max(pttl, 0) / 1000

    def _fetch(self, origin: str) -> tuple[dict[str, Any], int]:
        """Fetch robots.txt; return the record to store and its TTL.

        ``status`` is stored only for people reading Redis: it tells why a host is refused.
        """
        unreachable = min(self._ttl, UNREACHABLE_TTL)
        started = time.monotonic()
        try:
            with self._http.stream(
                "GET", f"{origin}/robots.txt", headers={"User-Agent": self._user_agent}
            ) as response:
                status = response.status_code
                if 200 <= status < 300:
                    text = self._read_capped(response, started)
                    return {"outcome": _RULES, "status": status, "text": text}, self._ttl
        except httpx.TooManyRedirects:
            return {"outcome": _ALLOW_ALL, "status": None, "text": ""}, self._ttl
        except (httpx.HTTPError, TimeoutError):
            return {"outcome": _DISALLOW_ALL, "status": None, "text": ""}, unreachable
        # 429 is a 4xx but asks us to slow down, so it is treated like 5xx (as Google does).
        if status >= 500 or status == 429:
            return {"outcome": _DISALLOW_ALL, "status": status, "text": ""}, unreachable
        return {"outcome": _ALLOW_ALL, "status": status, "text": ""}, self._ttl

    def _read_capped(self, response: httpx.Response, started: float) -> str:
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > self._max_bytes:
                # A cut line could turn "Allow: /shop/cart" into "Allow: /shop": drop it.
                del body[self._max_bytes :]
                body[:] = body[: body.rfind(b"\n") + 1]
                break
            if time.monotonic() - started > _FETCH_SECONDS:
                raise TimeoutError(f"robots.txt took over {_FETCH_SECONDS} s")
        return body.decode("utf-8-sig", errors="replace")  # RFC 9309: UTF-8, BOM ignored


def _parse(record: dict[str, Any]) -> _Rules:
    if record["outcome"] == _RULES:
        return _Rules(_RULES, Protego.parse(record["text"]))
    return _Rules(record["outcome"])


def _origin(url: str) -> str:
    """``scheme://host[:port]`` of an absolute http(s) URL, port shown only if not default."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise PermanentError(f"invalid URL {url!r}: {exc}") from None
    scheme = parsed.scheme
    if scheme not in _DEFAULT_PORTS or not parsed.raw_host:
        raise PermanentError(f"not an absolute http(s) URL: {url!r}")
    host = parsed.raw_host.decode("ascii").rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    port = parsed.port
    return f"{scheme}://{host}" + ("" if port in (None, _DEFAULT_PORTS[scheme]) else f":{port}")
