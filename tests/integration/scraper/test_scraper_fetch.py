"""scraper.fetch against a real local HTTP server on 127.0.0.1, scripted per path.

Every connection the client opens is checked to go to 127.0.0.0/8 (see ``_loopback_only``);
127.0.0.2 stands for "somewhere not allow-listed" and is refused by the guard before connecting.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from scraper.fetch import (
    MAX_DECOMPRESSED_CAP,
    FetchedPage,
    FetchLimits,
    PageTooLargeError,
    TooManyRedirectsError,
    UnsupportedContentTypeError,
    fetch,
    make_client,
)
from tasklane.errors import PermanentError, TransientError
from tasklane.net.guard import NetGuardPolicy, UnsafeURLError

LOCAL_ONLY = NetGuardPolicy.from_strings(["127.0.0.1/32"])
MiB = 1024 * 1024
LIMITS = FetchLimits(
    max_bytes=MiB,
    max_decompressed_bytes=4 * MiB,
    connect_timeout=2.0,
    read_timeout=0.5,
    total_timeout=5.0,
)
USER_AGENT = "TasklaneScraper/test (+https://example.invalid/bot)"
PAGE = b"<html><head><title>Hello</title></head><body><p>Hi</p></body></html>"


@dataclass
class Server:
    """The server's state: who asked for what, and how many body bytes each path wrote."""

    port: int = 0
    bomb: bytes = b""
    stop: threading.Event = field(default_factory=threading.Event)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


Route = Callable[["_Handler"], None]


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, and a body without Content-Length ends at close.
    server_state: Server
    routes: dict[str, Route]

    def do_GET(self) -> None:
        self.server_state.requests.append((self.path, dict(self.headers.items())))
        try:
            self.routes.get(self.path, _not_found)(self)
        except OSError:
            pass  # the client hung up, which is what most of these tests want

    def head(self, status: int, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()

    def body(self, data: bytes) -> None:
        self.wfile.write(data)
        sent = self.server_state.sent
        sent[self.path] = sent.get(self.path, 0) + len(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


def _html(handler: _Handler, status: int = 200, body: bytes = PAGE) -> None:
    handler.head(status, "text/html; charset=utf-8", Content_Length=str(len(body)))
    handler.body(body)


def _not_found(handler: _Handler) -> None:
    _html(handler, 404, b"<html><body>not here</body></html>")


def _redirect(to: str | Callable[[Server], str]) -> Route:
    def route(handler: _Handler) -> None:
        target = to if isinstance(to, str) else to(handler.server_state)
        handler.send_response(302)
        handler.send_header("Location", target)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def _huge(handler: _Handler) -> None:
    # Loopback socket buffers can swallow megabytes before the client reads a byte, which would
    # hide whether it hung up; a small send buffer and a paced write (like a real network) keep
    # what was written close to what was read.
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    handler.head(200, "text/html")  # no Content-Length: the body ends when we close
    chunk = b"x" * (64 * 1024)
    for _ in range(20 * MiB // len(chunk)):
        handler.body(chunk)
        time.sleep(0.003)


def _declared_huge(handler: _Handler) -> None:
    handler.head(200, "text/html", Content_Length=str(10 * MiB))
    chunk = b"x" * (64 * 1024)
    for _ in range(10 * MiB // len(chunk)):
        handler.body(chunk)


def _bomb(handler: _Handler) -> None:
    bomb = handler.server_state.bomb
    handler.head(200, "text/html", Content_Encoding="gzip", Content_Length=str(len(bomb)))
    handler.body(bomb)


def _gzipped(handler: _Handler) -> None:
    data = gzip.compress(PAGE * 100)
    handler.head(200, "text/html", Content_Encoding="gzip", Content_Length=str(len(data)))
    handler.body(data)


def _binary(handler: _Handler) -> None:
    handler.head(200, "application/octet-stream")
    handler.body(bytes(MiB))


def _encoded(encoding: str, data: bytes) -> Route:
    def route(handler: _Handler) -> None:
        handler.head(200, "text/html", Content_Encoding=encoding, Content_Length=str(len(data)))
        handler.body(data)

    return route


def _slow(handler: _Handler) -> None:
    handler.server_state.stop.wait()  # no byte until the test ends: only a timeout ends a fetch
    _html(handler)


def _drip(handler: _Handler) -> None:
    handler.head(200, "text/plain")
    while not handler.server_state.stop.wait(0.2):
        handler.body(b".")


ROUTES: dict[str, Route] = {
    "/page": _html,
    "/a": _redirect("/b"),
    "/b": _redirect("/c"),
    "/c": _html,
    "/escape": _redirect(lambda s: f"http://127.0.0.2:{s.port}/page"),
    "/loop": _redirect("/loop"),
    "/huge": _huge,
    "/declared-huge": _declared_huge,
    "/bomb": _bomb,
    "/gzipped": _gzipped,
    "/slow": _slow,
    "/drip": _drip,
    "/busy": lambda h: h.head(429, "text/plain", Retry_After="3", Content_Length="0"),
    "/unavailable": lambda h: h.head(503, "text/html", Content_Length="0"),
    "/broken": lambda h: h.head(500, "text/html", Content_Length="0"),
    "/binary": _binary,
    "/gone-binary": lambda h: h.head(410, "application/octet-stream", Content_Length="0"),
    "/deflate-zlib": _encoded("deflate", zlib.compress(PAGE)),
    "/deflate-raw": _encoded("deflate", zlib.compress(PAGE, wbits=-zlib.MAX_WBITS)),
    "/brotli": _encoded("br", b"\x8b\x03\x80hello\x03"),
    "/set-cookie": lambda h: h.head(
        200, "text/html", Set_Cookie="session=secret; Path=/", Content_Length="0"
    ),
}


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """200 MB of zeros, gzip-compressed (about 200 KB), built without holding 200 MB."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MiB)
    parts = [compressor.compress(zeros) for _ in range(200)]
    return b"".join(parts) + compressor.flush()


@pytest.fixture
def server(gzip_bomb: bytes) -> Iterator[Server]:
    state = Server(bomb=gzip_bomb)
    handler = type("Handler", (_Handler,), {"server_state": state, "routes": ROUTES})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        httpd.shutdown()
        httpd.server_close()  # joins the handler threads
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address the client connects to; anything outside 127.0.0.0/8 fails the test."""
    seen: list[str] = []
    real = socket.create_connection

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        seen.append(address[0])
        if not address[0].startswith("127."):
            pytest.fail(f"connection attempted to a non-loopback address: {address}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return seen


def get(
    server: Server,
    path: str,
    limits: FetchLimits = LIMITS,
    headers: dict[str, str] | None = None,
) -> FetchedPage:
    with make_client(LOCAL_ONLY, limits) as client:
        return fetch(
            client, server.url(path), headers=headers or {}, limits=limits, user_agent=USER_AGENT
        )


def test_html_page(server: Server) -> None:
    page = get(server, "/page")
    assert page.status == 200
    assert page.url == page.final_url == server.url("/page")
    assert (page.content_type, page.encoding) == ("text/html", "utf-8")
    assert page.body == PAGE
    assert page.wire_bytes == len(PAGE)
    assert page.redirects == 0
    assert page.retry_after is None
    assert 0 < page.elapsed_ms < 5000


def test_gzip_body_is_decoded_and_wire_bytes_are_compressed_bytes(server: Server) -> None:
    page = get(server, "/gzipped")
    assert page.body == PAGE * 100
    assert page.wire_bytes == len(gzip.compress(PAGE * 100)) < len(page.body)


@pytest.mark.parametrize("path", ["/deflate-zlib", "/deflate-raw"])
def test_deflate_bodies_are_decoded_with_or_without_zlib_wrapper(server: Server, path: str) -> None:
    assert get(server, path).body == PAGE


def test_unsupported_content_encoding_is_permanent(server: Server) -> None:
    with pytest.raises(PermanentError, match="content-encoding 'br'"):
        get(server, "/brotli")


def test_server_sees_our_user_agent_and_payload_cannot_override_managed_headers(
    server: Server,
) -> None:
    headers = {
        "user-agent": "Evil/1.0",
        "Host": "evil.example",
        "Accept-Encoding": "br",
        "Accept-Language": "de",
    }
    get(server, "/page", headers=headers)
    [(_, seen)] = server.requests
    assert seen["User-Agent"] == USER_AGENT
    assert seen["Host"] == f"127.0.0.1:{server.port}"
    assert seen["Accept-Encoding"] == "gzip, deflate"
    assert seen["Accept-Language"] == "de"


def test_header_injection_is_refused_before_sending(server: Server) -> None:
    with pytest.raises(PermanentError, match="X-Bad"):
        get(server, "/page", headers={"X-Bad": "a\r\nX-Injected: 1"})
    assert server.requests == []


def test_redirect_chain_is_followed(server: Server) -> None:
    page = get(server, "/a")
    assert (page.status, page.body) == (200, PAGE)
    assert page.url == server.url("/a")
    assert page.final_url == server.url("/c")
    assert page.redirects == 2
    assert server.paths() == ["/a", "/b", "/c"]


def test_redirect_to_an_address_not_allow_listed_is_refused(
    server: Server, connections: list[str]
) -> None:
    with pytest.raises(UnsafeURLError, match="127.0.0.2"):
        get(server, "/escape")
    assert server.paths() == ["/escape"]
    assert "127.0.0.2" not in connections


def test_too_many_redirects(server: Server) -> None:
    limits = FetchLimits(max_redirects=3, read_timeout=2.0)
    with pytest.raises(TooManyRedirectsError, match="more than 3 redirects") as info:
        get(server, "/loop", limits)
    assert isinstance(info.value, PermanentError)
    assert server.paths() == ["/loop"] * 4  # the first request and three hops


def test_huge_page_is_cut_off_at_max_bytes(server: Server) -> None:
    started = time.monotonic()
    with pytest.raises(PageTooLargeError, match="max_bytes") as info:
        get(server, "/huge")
    assert info.value.limit == "max_bytes"
    assert MiB < info.value.wire_bytes < MiB + 256 * 1024
    server.stop.wait(0.5)  # let the server's next write meet the closed connection
    assert time.monotonic() - started < 5
    assert server.sent["/huge"] < 2 * MiB


def test_declared_content_length_over_max_bytes_is_refused_before_the_body(
    server: Server,
) -> None:
    with pytest.raises(PageTooLargeError, match="Content-Length 10485760") as info:
        get(server, "/declared-huge")
    assert (info.value.limit, info.value.wire_bytes) == ("max_bytes", 0)


def test_gzip_bomb_is_cut_off_at_max_decompressed_bytes(server: Server) -> None:
    assert len(server.bomb) < 300 * 1024
    with pytest.raises(PageTooLargeError, match="max_decompressed_bytes") as info:
        get(server, "/bomb")
    assert info.value.limit == "max_decompressed_bytes"
    assert info.value.value == 4 * MiB
    assert 0 < info.value.wire_bytes < len(server.bomb)


def test_slow_server_times_out_as_transient(server: Server) -> None:
    # The server never answers: the read timeout (0.5 s) ends the fetch, not the total one (5 s).
    with pytest.raises(TransientError, match="timed out: ReadTimeout"):
        get(server, "/slow")


def test_slow_drip_hits_total_timeout(server: Server) -> None:
    # A byte every 0.2 s never lets the read timeout fire; the body never ends, so only the
    # total timeout can.
    limits = FetchLimits(read_timeout=2.0, total_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(TransientError, match="total timeout"):
        get(server, "/drip", limits)
    assert time.monotonic() - started >= 1.0  # it read on until its deadline


def test_429_is_transient_with_retry_after(server: Server) -> None:
    with pytest.raises(TransientError, match="HTTP 429") as info:
        get(server, "/busy")
    assert info.value.retry_after == 3.0


@pytest.mark.parametrize("path, status", [("/unavailable", 503), ("/broken", 500)])
def test_server_errors_are_transient(server: Server, path: str, status: int) -> None:
    with pytest.raises(TransientError, match=f"HTTP {status}") as info:
        get(server, path)
    assert info.value.retry_after is None


def test_404_is_returned_as_a_page(server: Server) -> None:
    page = get(server, "/nowhere")
    assert page.status == 404
    assert page.final_url == server.url("/nowhere")
    assert b"not here" in page.body


def test_error_page_of_unsupported_type_keeps_its_status_without_a_body(server: Server) -> None:
    page = get(server, "/gone-binary")
    assert (page.status, page.content_type, page.body) == (410, "application/octet-stream", b"")


def test_unsupported_content_type_is_refused_without_reading_the_body(server: Server) -> None:
    with pytest.raises(UnsupportedContentTypeError, match="application/octet-stream") as info:
        get(server, "/binary")
    assert isinstance(info.value, PermanentError)
    assert info.value.content_type == "application/octet-stream"


def test_connection_refused_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused
        with make_client(LOCAL_ONLY, LIMITS) as client:
            with pytest.raises(TransientError, match="connection failed"):
                fetch(
                    client,
                    f"http://127.0.0.1:{port}/",
                    headers={},
                    limits=LIMITS,
                    user_agent=USER_AGENT,
                )


# Pure helpers of scraper.fetch; here rather than in tests/unit, next to their users.


def test_max_decompressed_bytes_defaults_to_four_times_max_bytes_within_bounds() -> None:
    assert FetchLimits(max_bytes=MiB).max_decompressed_bytes == 4 * MiB
    assert FetchLimits(max_bytes=50 * MiB).max_decompressed_bytes == MAX_DECOMPRESSED_CAP
    assert FetchLimits(max_bytes=80 * MiB).max_decompressed_bytes == 80 * MiB
    assert FetchLimits(max_bytes=MiB, max_decompressed_bytes=123).max_decompressed_bytes == 123


@pytest.mark.parametrize(
    "kwargs", [{"max_bytes": 0}, {"max_redirects": -1}, {"total_timeout": 0}, {"read_timeout": -1}]
)
def test_invalid_limits_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FetchLimits(**kwargs)


def test_cookies_never_carry_over_between_fetches(server: Server) -> None:
    with make_client(LOCAL_ONLY, LIMITS) as client:
        for path in ("/set-cookie", "/page"):
            fetch(client, server.url(path), headers={}, limits=LIMITS, user_agent=USER_AGENT)
    sent = dict(server.requests)
    assert "Set-Cookie" not in sent["/page"] and "Cookie" not in sent["/page"]
    assert len(client.cookies) == 0
