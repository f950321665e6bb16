"""robots.txt rules (RFC 9309), fetched once per origin and shared by every worker through Redis.

A refused URL is :class:`RobotsDisallowedError` from :meth:`RobotsCache.check`; an unreachable
robots.txt disallows everything for :data:`UNREACHABLE_TTL`. Given the per-host gate, fetching
robots.txt takes its host's turn like any other request, and its Crawl-delay holds the host
from then on. Design: docs/scraper.md#reading-robotstxt.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import httpx
import redis
from protego import Protego

from scraper.politeness import DomainGate, Lease, host_key
from tasklane.errors import PermanentError

UNREACHABLE_TTL = 60
"""Seconds an unreachable robots.txt (5xx, 429, network error) disallows its whole origin."""

_DEFAULT_PORTS = {"http": 80, "https": 443}
_ALLOW_ALL, _DISALLOW_ALL, _RULES = "allow", "disallow", "rules"
# The product token leads the User-Agent header ("TasklaneBot/1.0 (+https://...)"); matching
# the whole header would let a group named after any word in it (such as "https") apply.
_PRODUCT_TOKEN = re.compile(r"[A-Za-z_-]+")
# Bounds one fetch (a server trickling bytes defeats per-read timeouts) and, with the wait for
# the host's turn, the lock's lifetime: how long other workers wait before fetching themselves.
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
        gate: when given, each robots.txt request (each redirect hop of it too) takes its
            host's turn, and a Crawl-delay read holds the host for that long after the answer.

    The methods taking ``max_wait`` may have to fetch robots.txt: with a gate they wait up to
    that long for the host's turn, and raise ``TransientError`` (host busy) beyond it.
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
        gate: DomainGate | None = None,
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
        self._gate = gate
        self._unlock = client.register_script(_UNLOCK)
        self._local: dict[str, tuple[float, _Rules]] = {}  # origin -> (monotonic deadline, rules)
        self._lock = threading.Lock()

    def allowed(self, url: str, *, max_wait: float = 0.0) -> bool:
        """Whether robots.txt of ``url``'s origin lets our user agent fetch it.

        Raises:
            PermanentError: ``url`` is not an absolute http(s) URL; ``UnsafeURLError`` from the
                guarded client when the origin may not be contacted at all.
            TransientError: robots.txt must be fetched and its host's turn did not come within
                ``max_wait`` seconds.
        """
        rules = self._rules(url, max_wait)
        if rules.parser is None:
            return rules.outcome == _ALLOW_ALL
        return rules.parser.can_fetch(url, self._token)

    def crawl_delay(self, url: str, *, max_wait: float = 0.0) -> float | None:
        """The Crawl-delay (seconds) robots.txt of ``url``'s origin asks of us, if any."""
        return _crawl_delay(self._rules(url, max_wait), self._token)

    def check(self, url: str, *, max_wait: float = 0.0) -> None:
        """Raise :class:`RobotsDisallowedError` unless :meth:`allowed`."""
        if not self.allowed(url, max_wait=max_wait):
            raise RobotsDisallowedError(url, self._user_agent)

    def key(self, url: str) -> str:
        """The Redis key holding robots.txt of ``url``'s origin (hashed: hosts may be long)."""
        return self._key(_origin(url))

    def _key(self, origin: str) -> str:
        return self._prefix + hashlib.sha256(origin.encode()).hexdigest()

    def _rules(self, url: str, max_wait: float) -> _Rules:
        origin = _origin(url)
        now = time.monotonic()
        with self._lock:
            cached = self._local.get(origin)
        if cached is not None and cached[0] > now:
            return cached[1]
        rules, ttl = self._load(origin, max_wait)
        with self._lock:
            self._local.pop(origin, None)
            if len(self._local) >= _LOCAL_ENTRIES:
                self._local.pop(next(iter(self._local)))  # the oldest insertion
            self._local[origin] = (now + ttl, rules)
        return rules

    def _load(self, origin: str, max_wait: float) -> tuple[_Rules, float]:
        """Rules and their remaining lifetime: from Redis, else fetched by one worker."""
        key = self._key(origin)
        lock = f"{key}:fetching"
        token = uuid.uuid4().hex
        lifetime = int((_FETCH_SECONDS + max_wait) * 1000)
        while True:
            stored = self._read(key)
            if stored is not None:
                return stored
            # One worker fetches; the others poll for its result. If it dies, its lock expires.
            if self._redis.set(lock, token, nx=True, px=lifetime):
                try:
                    record, ttl, rules = self._fetch(origin, max_wait)
                    self._redis.set(key, json.dumps(record), ex=ttl)
                finally:
                    self._unlock(keys=[lock], args=[token])
                return rules, ttl
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

    def _fetch(self, origin: str, max_wait: float) -> tuple[dict[str, Any], int, _Rules]:
        """Fetch robots.txt; return the record to store, its TTL and the rules it holds.

        ``status`` is stored only for people reading Redis: it tells why a host is refused.
        """
        unreachable = min(self._ttl, UNREACHABLE_TTL)
        try:
            answer = self._get(origin, time.monotonic() + max_wait)
        except (httpx.HTTPError, TimeoutError):
            return _record(_DISALLOW_ALL, None), unreachable, _Rules(_DISALLOW_ALL)
        if answer is None:  # too many redirects
            return _record(_ALLOW_ALL, None), self._ttl, _Rules(_ALLOW_ALL)
        status, text, rules = answer
        if rules is not None:
            return _record(_RULES, status, text), self._ttl, rules
        # 429 is a 4xx but asks us to slow down, so it is treated like 5xx (as Google does).
        if status >= 500 or status == 429:
            return _record(_DISALLOW_ALL, status), unreachable, _Rules(_DISALLOW_ALL)
        return _record(_ALLOW_ALL, status), self._ttl, _Rules(_ALLOW_ALL)

    def _get(self, origin: str, wait_until: float) -> tuple[int, str, _Rules | None] | None:
        """GET robots.txt of ``origin`` hop by hop, each request in its host's turn.

        Returns:
            The final status, and for a 2xx the text and its rules, whose Crawl-delay then holds
            ``origin``'s host (before the turn ends, so no request slips in meanwhile); None
            after more redirects than the client's ``max_redirects``.
        """
        request = self._http.build_request(
            "GET", f"{origin}/robots.txt", headers={"User-Agent": self._user_agent}
        )
        for _ in range(self._http.max_redirects + 1):
            with self._turn(str(request.url), wait_until):
                started = time.monotonic()
                response = self._http.send(request, stream=True, follow_redirects=False)
                try:
                    next_request = response.next_request
                    if next_request is None:
                        status = response.status_code
                        if not 200 <= status < 300:
                            return status, "", None
                        text = self._read_capped(response, started)
                        rules = _Rules(_RULES, Protego.parse(text))
                        delay = _crawl_delay(rules, self._token)
                        if self._gate is not None and delay:
                            self._gate.defer(host_key(origin), delay)
                        return status, text, rules
                finally:
                    response.close()
            request = next_request
        return None

    def _turn(self, url: str, wait_until: float) -> AbstractContextManager[Lease | None]:
        if self._gate is None:
            return nullcontext()
        return self._gate.turn(host_key(url), max_wait=max(0.0, wait_until - time.monotonic()))

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


def _record(outcome: str, status: int | None, text: str = "") -> dict[str, Any]:
    return {"outcome": outcome, "status": status, "text": text}


def _crawl_delay(rules: _Rules, token: str) -> float | None:
    return None if rules.parser is None else rules.parser.crawl_delay(token)


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
