"""A bounded worker shutdown: Celery's warm shutdown, turned cold when a deadline passes.

When the deadline passes, :class:`ShutdownDeadline` sends the worker SIGQUIT, Celery's cold
shutdown: the tasks still running are terminated and their messages go back to the broker.
Design: docs/shutdown.md#what-a-worker-does-on-sigterm.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from celery import bootsteps, signals
from celery.worker import state

logger = logging.getLogger(__name__)


class ShutdownDeadline(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker step: a cold shutdown ``app.soft_shutdown_timeout`` s into a warm one."""

    label = "Shutdown deadline"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timeout = float(parent.app.soft_shutdown_timeout)  # a TasklaneApp's
        self._timer: threading.Timer | None = None
        if os.environ.get("REMAP_SIGTERM"):
            # SIGTERM would then start the cold shutdown directly: no warm phase to bound.
            logger.warning(
                "REMAP_SIGTERM=%s is set: SIGTERM hands running tasks back at once instead of "
                "letting them finish for up to %gs; unset it (docs/shutdown.md)",
                os.environ["REMAP_SIGTERM"],
                self.timeout,
            )

    def start(self, parent: Any) -> None:
        signals.worker_shutting_down.connect(self._on_shutting_down, weak=False)

    def shutdown(self, parent: Any) -> None:
        signals.worker_shutting_down.disconnect(self._on_shutting_down)

    def _on_shutting_down(self, sig: str = "", how: str = "", **kwargs: Any) -> None:
        # Called from the worker's signal handler: start a timer and nothing more.
        if how != "Warm" or self._timer is not None:
            return
        self._timer = threading.Timer(self.timeout, self._escalate)
        self._timer.daemon = True  # a warm shutdown that ends in time exits without waiting
        self._timer.start()

    def _escalate(self) -> None:
        logger.warning(
            "soft shutdown timeout (%gs) passed with %d task(s) running: cold shutdown, their "
            "messages go back to the broker",
            self.timeout,
            len(state.active_requests),
        )
        # Celery's documented way from a warm to a cold shutdown; its handler runs in the main
        # thread, where the worker's state lives.
        os.kill(os.getpid(), signal.SIGQUIT)
