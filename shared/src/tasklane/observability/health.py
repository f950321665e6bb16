"""Liveness and readiness of workers and Beat, answered from memory (no round trip per probe).

:class:`WorkerHealth` and :class:`BeatHealth` answer ``/livez`` and ``/readyz`` beside ``/metrics``
(:func:`tasklane.observability.metrics.serve_endpoints`, which takes any :class:`Probes`).
Design: docs/observability.md#health-probes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from celery import bootsteps

#: Seconds between two beats of the main loop.
LOOP_BEAT = 1.0
#: Seconds without a beat after which the worker counts as hung.
LIVENESS_TIMEOUT = 30.0


class Probes(Protocol):
    """What ``/livez`` and ``/readyz`` ask: each answers whether, and a one-line why."""

    def live(self) -> tuple[bool, str]: ...

    def ready(self) -> tuple[bool, str]: ...


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
        health: WorkerHealth | None = c.app.health  # a TasklaneApp's (tasklane.worker.app)
        if health is None:
            return
        health.beat()
        if self._timer is None and c.timer is not None:
            self._timer = c.timer.call_repeatedly(LOOP_BEAT, health.beat)
        health.set_ready(True)

    def stop(self, c: Any) -> None:
        health: WorkerHealth | None = c.app.health
        if health is not None:
            health.set_ready(False)

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@dataclass
class BeatHealth:
    """What Beat's probes read; written by its tick loop, read by the probe thread."""

    live_timeout: float = LIVENESS_TIMEOUT
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: When the next tick should start (monotonic): the end of the last tick plus its sleep.
    _due: float = field(default_factory=time.monotonic)
    _ready: bool = False
    _why: str = "starting"

    def ticked(self, next_in: float, *, reached: bool, why: str) -> None:
        """A tick ended: the next is due in ``next_in`` seconds; whether it reached Redis."""
        with self._lock:
            self._due = time.monotonic() + next_in
            self._ready = reached
            self._why = why

    def live(self) -> tuple[bool, str]:
        """Whether the next tick is overdue by no more than the timeout, and why.

        Measured from when the tick is due rather than from the last one, so a long sleep
        between ticks (``TASKLANE_BEAT_MAX_INTERVAL``) never reads as a stall.
        """
        with self._lock:
            late = time.monotonic() - self._due
        if late <= 0:
            return True, f"tick loop on time, next tick in {-late:.1f}s"
        ok = late <= self.live_timeout
        return ok, f"tick loop {'running' if ok else 'stalled'}, next tick {late:.1f}s overdue"

    def ready(self) -> tuple[bool, str]:
        """Whether the last tick reached Redis, and this Beat's role."""
        with self._lock:
            return self._ready, self._why
