"""Liveness and readiness of a worker, answered from memory (no broker round trip per probe).

* **Live**: the worker's main loop (the consumer's event loop, where messages are received and
  acknowledged) ran a timer recently. A hung main loop stops the timer; the probe, served from its
  own thread, then answers 503. While reconnecting to the broker the worker counts as live.
* **Ready**: the consumer is started, which Celery does once connected to the broker and
  consuming; when the connection is lost, Celery stops the consumer's steps until it reconnects,
  and readiness follows.

Both are served beside ``/metrics`` on ``TASKLANE_METRICS_PORT``: ``/livez`` and ``/readyz``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from celery import bootsteps

#: Seconds between two beats of the main loop.
LOOP_BEAT = 1.0
#: Seconds without a beat after which the worker counts as hung.
LIVENESS_TIMEOUT = 30.0


@dataclass
class WorkerHealth:
    """What the probes read; written by the worker's main loop, read by the probe thread."""

    live_timeout: float = LIVENESS_TIMEOUT
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_beat: float = field(default_factory=time.monotonic)
    _ready: bool = False

    def beat(self) -> None:
        """The main loop is making progress."""
        with self._lock:
            self._last_beat = time.monotonic()

    def set_ready(self, ready: bool) -> None:
        """Connected and consuming (or not any more)."""
        with self._lock:
            self._ready = ready
            self._last_beat = time.monotonic()

    def live(self) -> tuple[bool, str]:
        """Whether the main loop beat within the timeout, and why.

        While not consuming, the main loop is connecting (with Celery's retries) rather than
        running its event loop: that is progress too, and readiness already reports it.
        """
        with self._lock:
            age = time.monotonic() - self._last_beat
            ready = self._ready
        if not ready:
            return True, "connecting to the broker"
        ok = age <= self.live_timeout
        return ok, f"main loop {'ran' if ok else 'stalled'} {age:.1f}s ago"

    def ready(self) -> tuple[bool, str]:
        """Whether the worker is connected to the broker and consuming."""
        with self._lock:
            ready = self._ready
        return ready, "consuming" if ready else "not consuming (broker unreachable or starting)"


class HealthStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: ready while started, and a timer on the event loop for liveness."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self._timer: Any = None

    def start(self, c: Any) -> None:
        health: WorkerHealth | None = getattr(c.app.conf, "tasklane_health", None)
        if health is None:
            return
        health.beat()
        if self._timer is None and c.timer is not None:
            self._timer = c.timer.call_repeatedly(LOOP_BEAT, health.beat)
        health.set_ready(True)

    def stop(self, c: Any) -> None:
        health: WorkerHealth | None = getattr(c.app.conf, "tasklane_health", None)
        if health is not None:
            health.set_ready(False)

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
