"""Faults a test can cause without touching the shared servers: a TCP proxy it can cut."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType

from tasklane_dev.sinks import free_port


class TcpProxy:
    """Forwards a free loopback port to ``target``, until :meth:`cut`.

    A cut closes every forwarded connection and the listening socket, so clients see their
    connections end and new connects refused, as when a broker goes away; :meth:`restore`
    listens on the same port again. :meth:`drop_clients` closes only the clients' ends, as a
    network partition the server has not noticed yet. The server behind it is never touched.

    ``before_forward(connection, from_client, data)``, when given, sees every chunk before it is
    passed on (``connection`` numbers the forwarded connections from 1) and may block to hold it:
    one connection's traffic can then reach the server late, as across a slower network path.
    """

    def __init__(
        self,
        host: str,
        port: int,
        before_forward: Callable[[int, bool, bytes], None] | None = None,
    ) -> None:
        self.target = (host, port)
        self._before_forward = before_forward
        self.port = free_port()
        self.connections_made = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        #: Server-side ends kept open after :meth:`drop_clients`, closed by :meth:`cut`.
        self._held: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    def __enter__(self) -> TcpProxy:
        self.restore()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cut()

    def restore(self) -> None:
        """Listen (again) and forward new connections."""
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and close every open one."""
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets | self._held, set()
            self._pairs, self._held = [], set()
        if listener is not None:
            _close(listener)
        for sock in sockets:
            _close(sock)

    def drop_clients(self) -> None:
        """Close the clients' ends of the open connections and keep the server's ends open.

        The server still sees each old connection alive (until its heartbeat check), as after
        a partition it has not noticed; the clients see theirs end and connect again.
        """
        with self._lock:
            pairs, self._pairs = self._pairs, []
            for client, upstream in pairs:
                self._held.add(upstream)
                self._sockets.difference_update((client, upstream))
        for client, _ in pairs:
            _close(client)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    _close(client)
                    _close(upstream)
                    return
                self._sockets.update((client, upstream))
                self._pairs.append((client, upstream))
                self.connections_made += 1
                number = self.connections_made
            for source, sink, from_client in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(source, sink, number, from_client), daemon=True
                ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, number: int, from_client: bool
    ) -> None:
        try:
            while data := source.recv(65536):
                if self._before_forward is not None:
                    self._before_forward(number, from_client, data)
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            ends = [sock for sock in (source, sink) if sock not in self._held]
            self._sockets.difference_update((source, sink))
        for sock in ends:
            _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
