"""Run the gateway under uvicorn (uvloop, httptools) and drain on SIGTERM.

On SIGTERM ``/readyz`` answers 503 at once; the gateway keeps serving for the shutdown delay,
so load balancers stop sending, then uvicorn stops listening and lets in-flight requests finish.
Design: docs/gateway.md#shutdown.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from types import FrameType

import uvicorn

from tasklane.gateway.app import create_gateway
from tasklane.gateway.readiness import Readiness
from tasklane.gateway.settings import GatewaySettings
from tasklane.gateway.tokens import load_tokens
from tasklane.observability.tracing import start_tracing, stop_tracing
from tasklane.settings import Settings

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM or SIGINT drains before it stops.

    The exit is clean (status 0): the signal is not raised again after shutdown, as uvicorn
    would, since the gateway handled it.
    """

    def __init__(self, config: uvicorn.Config, readiness: Readiness, delay: float) -> None:
        super().__init__(config)
        self._readiness = readiness
        self._delay = delay
        self._timer: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._readiness.draining:  # a second signal: stop now
            if sig == signal.SIGINT and self.should_exit:
                self.force_exit = True
            self.should_exit = True
            return
        self._readiness.draining = True
        logger.info("signal %d: draining for %gs, then stopping", sig, self._delay)
        # should_exit is a flag uvicorn's main loop polls: setting it from a thread is safe.
        self._timer = threading.Timer(self._delay, self._stop)
        self._timer.daemon = True
        self._timer.start()

    def _stop(self) -> None:
        self.should_exit = True


def serve(settings: Settings, gateway: GatewaySettings) -> None:
    """Serve the gateway until SIGTERM.

    Raises:
        SettingsError: no tokens file or an invalid one, no broker, or no Redis for state.
    """
    tokens = load_tokens(gateway.require_tokens_file())
    app = create_gateway(settings, gateway, tokens)  # checks broker and state settings
    provider = start_tracing("gateway")
    config = uvicorn.Config(
        app,
        host=gateway.host,
        port=gateway.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        # A request in flight may wait out a broker outage (publish_timeout) in the queue
        # and again on a thread.
        timeout_graceful_shutdown=math.ceil(2 * settings.publish_timeout) + 5,
    )
    server = DrainingServer(config, app.state.gateway.readiness, gateway.shutdown_delay)
    try:
        server.run()
    finally:
        stop_tracing(provider)
