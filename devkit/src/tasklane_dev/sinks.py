"""Local SMTP and webhook sinks that record what they receive (demo and tests).

Needs the ``local`` extra (aiosmtpd).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Recorder(ABC):
    """What both sinks share: a lock-guarded list of what arrived, waiting, and a context."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[Any] = []

    def _record(self, item: Any) -> None:
        with self._lock:
            self._received.append(item)

    def _wait(self, count: int, timeout: float, what: str) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self._received) >= count:
                    return list(self._received)
            time.sleep(0.02)
        raise TimeoutError(f"{type(self).__name__} holds {len(self._received)} of {count} {what}")

    @abstractmethod
    def start(self) -> Self:
        """Start serving; returns self."""

    @abstractmethod
    def stop(self) -> None:
        """Stop serving."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class ReceivedMail:
    """One message as the SMTP server accepted it."""

    sender: str
    recipients: list[str]
    message: EmailMessage


class SmtpSink(_Recorder):
    """An aiosmtpd server on 127.0.0.1 that keeps every accepted message.

    Args:
        before_data: called with the envelope's recipients before the DATA reply; tests use it to
            stall or fail a delivery. Return an SMTP reply string to refuse, ``None`` to accept.
    """

    def __init__(
        self,
        port: int | None = None,
        before_data: Callable[[list[str]], str | None] | None = None,
    ) -> None:
        from aiosmtpd.controller import Controller

        super().__init__()
        self.port = port or free_port()
        self._before_data = before_data
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        """aiosmtpd hook: record the message unless ``before_data`` refuses it."""
        if self._before_data is not None:
            refusal = self._before_data(list(envelope.rcpt_tos))
            if refusal is not None:
                return refusal
        parsed = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        self._record(ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), parsed))
        return "250 Message accepted for delivery"

    @property
    def messages(self) -> list[ReceivedMail]:
        """Every accepted message so far."""
        with self._lock:
            return list(self._received)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[ReceivedMail]:
        """Block until ``count`` messages arrived; returns them all."""
        return self._wait(count, timeout, "messages")

    def start(self) -> Self:
        """Start serving; returns self."""
        self._controller.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._controller.stop()


@dataclass(frozen=True)
class ReceivedRequest:
    """One HTTP request as the webhook sink saw it; header names are lower-cased."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    received_at: float = field(default_factory=time.monotonic)

    @property
    def path(self) -> str:
        """The path without the query string."""
        return urlsplit(self.target).path

    @property
    def raw_query(self) -> str:
        """The query string as sent."""
        return urlsplit(self.target).query

    @property
    def query(self) -> dict[str, str]:
        """The query parameters, decoded (the first value of each)."""
        return {name: values[0] for name, values in parse_qs(self.raw_query).items()}

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


@dataclass
class Reply:
    """A scripted answer of the webhook sink."""

    status: int = 200
    body: bytes = b'{"errcode":0,"errmsg":"ok"}'
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class HttpRecorder(_Recorder):
    """A threaded HTTP server on 127.0.0.1 that records the requests it receives.

    The base of the webhook sink, the site server and test receivers: a subclass builds its
    request handler and calls :meth:`_serve` with it.
    """

    def __init__(self) -> None:
        super().__init__()
        self._closing = threading.Event()

    def _serve(self, handler: type[BaseHTTPRequestHandler], *, join_handlers: bool) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        # Joined handlers never outlive the server; keep-alive servers must not wait for them.
        self._server.daemon_threads = not join_handlers
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL of the server, without a trailing slash."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request so far."""
        with self._lock:
            return list(self._received)

    def wait_for(self, count: int, timeout: float = 20.0) -> list[ReceivedRequest]:
        """Block until ``count`` requests arrived; returns them all."""
        return self._wait(count, timeout, "requests")

    def start(self) -> Self:
        """Start serving; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake stalled handlers and close the socket."""
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class WebhookSink(HttpRecorder):
    """A threaded HTTP server on 127.0.0.1 that records requests and answers from a script.

    Replies queued with :meth:`script` are used in order; after that every request gets 200.
    """

    def __init__(self) -> None:
        super().__init__()
        self._replies: list[Reply] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                sink._record(ReceivedRequest("POST", self.path, headers, body))
                reply = sink._next_reply()
                if reply.delay and sink._closing.wait(reply.delay):
                    return  # the sink is stopping; the client gave up long ago
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test and demo output readable

        self._serve(Handler, join_handlers=True)

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests."""
        with self._lock:
            self._replies.extend(replies)

    def _next_reply(self) -> Reply:
        with self._lock:
            return self._replies.pop(0) if self._replies else Reply()


class SiteServer(HttpRecorder):
    """A small website on 127.0.0.1: ``GET`` of a path answers its :class:`Reply`, else 404.

    A path given a list of replies answers them in turn, repeating the last one. Records every
    request, so a test can count the fetches of each page. Speaks HTTP/1.1 with
    keep-alive like real sites; an idle connection is closed after ``idle_timeout`` seconds.
    Pages without a ``Content-Type`` header are served as UTF-8 HTML.
    """

    def __init__(
        self, pages: Mapping[str, Reply | list[Reply]], *, idle_timeout: float = 5.0
    ) -> None:
        super().__init__()
        self._pages = {
            path: list(reply) if isinstance(reply, list) else [reply]
            for path, reply in pages.items()
        }
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = idle_timeout
            # Headers and body go out as two writes; with Nagle on, a keep-alive client
            # waits for the delayed ACK (40 ms) before it sees the body.
            disable_nagle_algorithm = True

            def do_GET(self) -> None:  # noqa: N802
                headers = {name.lower(): value for name, value in self.headers.items()}
                site._record(ReceivedRequest("GET", self.path, headers, b""))
                reply = site._reply(urlsplit(self.path).path)
                if reply.delay and site._closing.wait(reply.delay):
                    return
                self.send_response(reply.status)
                sent = {name.lower() for name in reply.headers}
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if "content-type" not in sent:
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                if "content-length" not in sent:
                    self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._serve(Handler, join_handlers=False)

    def _reply(self, path: str) -> Reply:
        with self._lock:
            replies = self._pages.get(path)
            if not replies:
                return _NOT_FOUND
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def hits(self) -> dict[str, int]:
        """How many times each path was requested."""
        counts: dict[str, int] = {}
        for request in self.requests:
            counts[request.path] = counts.get(request.path, 0) + 1
        return counts


_NOT_FOUND = Reply(status=404, body=b"<html><title>Not found</title></html>")
