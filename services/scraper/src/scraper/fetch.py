"""Fetch one page through the SSRF guard with hard limits on size, time and redirects.

Plain domain code: no Celery here. Failures are :class:`~tasklane.errors.TransientError` or
:class:`~tasklane.errors.PermanentError`; redirects and content-encoding are handled here, and
every request of a fetch (the first and each redirect hop) is admitted by the caller's
:data:`Admit` first: robots.txt and the per-host turn (see :mod:`scraper.page`).
Design: docs/scraper.md#redirects-and-compression.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TypeAlias

import httpx

from tasklane.errors import PermanentError, TransientError
from tasklane.net.guard import NetGuardPolicy, guarded_client
from tasklane.net.retry_after import retry_after_seconds

DEFAULT_ACCEPTED_TYPES = frozenset(
    {
        "text/html",
        "application/xhtml+xml",
        "text/plain",
        "application/json",
        "application/xml",
        "text/xml",
        "text/csv",
    }
)
MAX_DECOMPRESSED_CAP = 64 * 1024 * 1024
# Set by the transport or by fetch itself; a payload must not be able to change any of them.
# Accept-Encoding is ours because only what _Decoder handles may be asked for.
_MANAGED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "proxy-connection",
        "proxy-authorization",
        "user-agent",
        "accept-encoding",
    }
)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_NO_BODY_STATUSES = frozenset({204, 205, 304})

Admit: TypeAlias = Callable[[str, float], AbstractContextManager[object]]
"""``(url, max_wait) -> context`` around one request of a fetch: entering it may wait up to
``max_wait`` seconds (for the host's turn) or raise to refuse ``url`` (robots.txt); the request
is sent, and its response read and closed, inside it."""


class PageTooLargeError(PermanentError):
    """The page is over a size limit; ``limit`` names it (``max_bytes`` or
    ``max_decompressed_bytes``), ``wire_bytes`` is how much body was read before stopping."""

    def __init__(self, limit: str, value: int, wire_bytes: int, detail: str = "") -> None:
        # The message is the only argument: result backends store and show an error's args.
        shown = f" ({detail})" if detail else ""
        super().__init__(f"page exceeds {limit}={value}{shown}")
        self.limit = limit
        self.value = value
        self.wire_bytes = wire_bytes
        self.detail = detail

    def __reduce__(self) -> tuple[type[PageTooLargeError], tuple[str, int, int, str]]:
        return type(self), (self.limit, self.value, self.wire_bytes, self.detail)


class UnsupportedContentTypeError(PermanentError):
    """The response's media type is not one of the accepted types."""

    def __init__(self, content_type: str) -> None:
        super().__init__(f"unsupported content type {content_type or '(none)'!r}")
        self.content_type = content_type

    def __reduce__(self) -> tuple[type[UnsupportedContentTypeError], tuple[str]]:
        return type(self), (self.content_type,)


class TooManyRedirectsError(PermanentError):
    """The redirect chain is longer than ``max_redirects``."""


@dataclass(frozen=True)
class FetchLimits:
    """Hard limits of one fetch.

    Args:
        max_bytes: body bytes read from the network (after chunked framing, before decoding).
        max_decompressed_bytes: body bytes after content-encoding is decoded; 0 (the default)
            means ``4 * max_bytes``, at most 64 MiB but never below ``max_bytes``.
        connect_timeout: seconds to connect (and to wait for a pooled connection).
        read_timeout: seconds of silence allowed while reading (and writing).
        total_timeout: seconds for the whole fetch from its first request on: redirect hops,
            waiting for their turns and the body included; checked between hops and after every
            chunk read, so the worst case is this plus one ``read_timeout``.
        max_redirects: redirect hops followed before giving up.
        accepted_types: media types (lower case, no parameters) whose bodies are read.
    """

    max_bytes: int = 5 * 1024 * 1024
    max_decompressed_bytes: int = 0
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    total_timeout: float = 15.0
    max_redirects: int = 5
    accepted_types: frozenset[str] = field(default=DEFAULT_ACCEPTED_TYPES)

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_decompressed_bytes < 0 or self.max_redirects < 0:
            raise ValueError("byte limits must be positive and max_redirects not negative")
        if min(self.connect_timeout, self.read_timeout, self.total_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_decompressed_bytes == 0:
            derived = max(self.max_bytes, min(4 * self.max_bytes, MAX_DECOMPRESSED_CAP))
            object.__setattr__(self, "max_decompressed_bytes", derived)


@dataclass(frozen=True)
class FetchedPage:
    """A page as fetched: final response metadata and its decoded body."""

    url: str
    final_url: str
    status: int
    content_type: str
    encoding: str | None
    body: bytes
    wire_bytes: int
    elapsed_ms: float  # the requests' time, waits for redirect hops' turns left out
    retry_after: float | None
    redirects: int


def make_client(policy: NetGuardPolicy, limits: FetchLimits) -> httpx.Client:
    """A guarded ``httpx.Client`` with the timeouts and redirect limit of ``limits``.

    The client keeps no cookies: one worker's client serves every payload, and a cookie set
    while fetching for one must never be sent while fetching for another.
    """
    return guarded_client(
        policy,
        timeout=_timeout(limits, limits.total_timeout),
        max_redirects=limits.max_redirects,
        follow_redirects=True,
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )


def fetch(
    client: httpx.Client,
    url: str,
    *,
    headers: Mapping[str, str],
    limits: FetchLimits,
    user_agent: str,
    admit: Admit | None = None,
    max_wait: float = 0.0,
) -> FetchedPage:
    """GET ``url`` with ``client`` (from :func:`make_client`) within ``limits``.

    ``headers`` are sent as given except the ones the transport or this function manage
    (``Host``, ``Content-Length``, hop-by-hop headers, ``Accept-Encoding`` and
    ``User-Agent``, which is always ``user_agent``): those are dropped silently, since a
    payload copied from a browser commonly carries some of them and they are harmless to ignore.

    Args:
        admit: entered before every request, the first and each redirect hop alike, with the
            URL about to be requested; whatever it raises ends the fetch as it is. None admits
            everything at once.
        max_wait: seconds ``admit`` may wait before the first request. A hop may wait what is
            left of ``total_timeout``, which starts with the first request: a fetch that has
            begun ends in time however long its hops' turns take.

    Returns:
        The final response (2xx, 3xx without ``Location``, 4xx): a 404 is data, not an error.
        Non-2xx answers whose type is not accepted come back with an empty body.

    Raises:
        TransientError: timeout, connection failure, 429/503 (with ``retry_after``), other 5xx.
        PageTooLargeError: over ``max_bytes`` (declared or read) or ``max_decompressed_bytes``.
        UnsupportedContentTypeError: a 2xx answer of a type not in ``accepted_types``.
        TooManyRedirectsError: more than ``max_redirects`` hops.
        UnsafeURLError: the guard refused the URL or a redirect target.
        PermanentError: invalid URL or header, undecodable or unsupported content-encoding.
    """
    enter = admit or _admit_all
    started = deadline = waited = 0.0
    try:
        request = client.build_request(
            "GET",
            url,
            headers=_request_headers(headers, user_agent),
            timeout=_timeout(limits, limits.total_timeout),
        )
    except httpx.InvalidURL as exc:
        raise PermanentError(f"invalid URL: {exc}") from None
    redirects = 0
    try:
        while True:
            asked = time.monotonic()
            with enter(str(request.url), _remaining(deadline) if redirects else max_wait):
                admitted = time.monotonic()
                if redirects:
                    waited += admitted - asked
                    timeout = _timeout(limits, _remaining(deadline))
                    request.extensions["timeout"] = timeout.as_dict()
                else:  # the clock starts with the first request, not while it waited its turn
                    started, deadline = admitted, admitted + limits.total_timeout
                response = client.send(request, stream=True, follow_redirects=False)
                try:
                    next_request = response.next_request
                    if next_request is None:
                        body = _read_final(response, limits, deadline)
                        return FetchedPage(
                            url=url,
                            final_url=str(response.url),
                            status=response.status_code,
                            content_type=_media_type(response.headers.get("Content-Type")),
                            encoding=response.charset_encoding,
                            body=body,
                            wire_bytes=response.num_bytes_downloaded,
                            elapsed_ms=(time.monotonic() - started - waited) * 1000,
                            retry_after=retry_after_seconds(response.headers.get("Retry-After")),
                            redirects=redirects,
                        )
                finally:
                    response.close()  # unread bodies close the connection instead of draining
            if redirects >= limits.max_redirects:
                raise TooManyRedirectsError(f"more than {limits.max_redirects} redirects")
            redirects += 1
            request = next_request
    except httpx.TimeoutException as exc:
        raise TransientError(f"timed out: {type(exc).__name__}: {exc}") from exc
    except httpx.TransportError as exc:
        raise TransientError(f"connection failed: {type(exc).__name__}: {exc}") from exc
    except httpx.InvalidURL as exc:
        raise PermanentError(f"invalid redirect URL: {exc}") from None


def _admit_all(url: str, max_wait: float) -> AbstractContextManager[object]:
    return nullcontext()


def _request_headers(headers: Mapping[str, str], user_agent: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for name, value in {**headers, "User-Agent": user_agent}.items():
        # h11 would refuse these later as a LocalProtocolError, which looks transient.
        if not _TOKEN.fullmatch(name) or not value.isascii() or _BAD_VALUE_CHAR.search(value):
            raise PermanentError(f"invalid request header {name!r}")
        if name.lower() not in _MANAGED_HEADERS:
            result[name] = value
    result["User-Agent"] = user_agent
    result["Accept-Encoding"] = "gzip, deflate"
    return result


def _timeout(limits: FetchLimits, remaining: float) -> httpx.Timeout:
    connect = min(limits.connect_timeout, remaining)
    read = min(limits.read_timeout, remaining)
    return httpx.Timeout(connect=connect, read=read, write=read, pool=connect)


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TransientError("total timeout exceeded")
    return remaining


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def _read_final(response: httpx.Response, limits: FetchLimits, deadline: float) -> bytes:
    status = response.status_code
    if status in (429, 503):
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        raise TransientError(f"HTTP {status}", retry_after=retry_after)
    if status >= 500:
        raise TransientError(f"HTTP {status}")
    if status in _NO_BODY_STATUSES:
        return b""
    media_type = _media_type(response.headers.get("Content-Type"))
    if media_type not in limits.accepted_types:
        if 200 <= status < 300:
            raise UnsupportedContentTypeError(media_type)
        return b""  # keep the status of an error page even if its body is of no use
    declared = response.headers.get("Content-Length", "").strip()
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise PageTooLargeError("max_bytes", limits.max_bytes, 0, f"Content-Length {declared}")
    return _read_body(response, limits, deadline)


def _read_body(response: httpx.Response, limits: FetchLimits, deadline: float) -> bytes:
    decoder = _Decoder(response.headers.get("Content-Encoding", ""))
    cap = limits.max_decompressed_bytes
    chunks: list[bytes] = []
    size = 0
    for raw in response.iter_raw():
        wire = response.num_bytes_downloaded
        if wire > limits.max_bytes:
            raise PageTooLargeError("max_bytes", limits.max_bytes, wire)
        # Asking for one byte more than allowed tells "exactly at the limit" from "over it".
        data = decoder.decode(raw, cap - size + 1)
        size += len(data)
        if size > cap:
            raise PageTooLargeError("max_decompressed_bytes", cap, wire)
        chunks.append(data)
        if time.monotonic() > deadline:
            raise TransientError(f"total timeout of {limits.total_timeout}s exceeded")
    return b"".join(chunks)


class _Decoder:
    """Content-encoding decoder whose output per call is capped (gzip, deflate, identity)."""

    def __init__(self, content_encoding: str) -> None:
        codings = [c.strip().lower() for c in content_encoding.split(",")]
        codings = [c for c in codings if c not in ("", "identity")]
        if not codings:
            self._wbits: int | None = None
        elif codings in (["gzip"], ["x-gzip"]):
            self._wbits = 16 + zlib.MAX_WBITS
        elif codings == ["deflate"]:
            self._wbits = zlib.MAX_WBITS  # zlib-wrapped per RFC; raw deflate tried on error
        else:
            raise PermanentError(f"unsupported content-encoding {content_encoding!r}")
        self._zlib = zlib.decompressobj(self._wbits) if self._wbits is not None else None
        self._started = False

    def decode(self, data: bytes, max_length: int) -> bytes:
        """Decode ``data``, producing at most ``max_length`` (> 0) bytes."""
        if self._zlib is None:
            return data[:max_length]
        try:
            try:
                out = self._zlib.decompress(data, max_length)
            except zlib.error:
                # Some servers send raw deflate under "deflate"; only the first bytes tell.
                if self._started or self._wbits != zlib.MAX_WBITS:
                    raise
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                out = self._zlib.decompress(data, max_length)
        except zlib.error as exc:
            raise PermanentError(f"cannot decode the body: {exc}") from None
        self._started = True
        return out
