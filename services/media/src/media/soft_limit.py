"""A transcode's own check of its soft time limit, and the pool's signal ignored once it stopped.

The pool delivers the soft limit as a signal, timed from when its main process saw the job start,
and raised wherever Python code runs next (possibly inside a callback of PyAV's, which may not
pass it on). Once, on a loaded machine, a transcode with a 0.2 s soft limit ran to the end;
checking this process's own clock per frame makes the stop certain.

A run that stopped itself may still receive the pool's signal a moment later, while Celery
stores its failure and Tasklane writes its dead letter: raised there, it would cut either short.
So the signal is ignored from the run's own stop until the run has ended (``task_postrun``).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded

#: The signal by which Celery's pool raises a task's soft time limit (billiard's
#: ``SIG_SOFT_TIMEOUT``); ``None`` where the platform has no such signal.
SOFT_LIMIT_SIGNAL: signal.Signals | None = getattr(signal, "SIGUSR1", None)


class PoolSignalHold:
    """The pool's soft-limit signal ignored, in this process, until :meth:`release`."""

    def __init__(self) -> None:
        self.held = False
        self._previous: Any = None

    def hold(self) -> None:
        # Handlers are the main thread's to set: a threads pool keeps the pool's behaviour.
        if SOFT_LIMIT_SIGNAL is None or self.held:
            return
        if threading.current_thread() is not threading.main_thread():
            return
        # A signal already on its way when the handler is replaced is dropped as well: CPython
        # runs no Python handler for a signal whose handler is SIG_IGN by the time it is handled.
        self._previous = signal.signal(SOFT_LIMIT_SIGNAL, signal.SIG_IGN)
        self.held = True

    def release(self) -> None:
        if self.held and SOFT_LIMIT_SIGNAL is not None:
            signal.signal(SOFT_LIMIT_SIGNAL, self._previous)
            self.held = False


#: One per process, as a signal's handler is.
POOL_SIGNAL = PoolSignalHold()


def soft_limit_watch(
    seconds: float | None, hold: PoolSignalHold = POOL_SIGNAL
) -> Callable[[], bool]:
    """A per-frame check that raises ``SoftTimeLimitExceeded`` once ``seconds`` have passed.

    Before raising, it has ``hold`` ignore the pool's signal for the rest of the run.
    """
    if not seconds:
        return lambda: False
    deadline = time.monotonic() + float(seconds)

    def passed() -> bool:
        if time.monotonic() >= deadline:
            hold.hold()
            raise SoftTimeLimitExceeded()
        return False

    return passed


def release_after_run(**_: Any) -> None:
    """``task_postrun`` receiver: the pool's signal is the run's limit again for the next run."""
    POOL_SIGNAL.release()
