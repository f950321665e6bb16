"""A test-only Beat app whose tick loop hangs on SIGUSR1, until SIGUSR2, while its probes serve.

Run as ``tasklane beat --app tests.support.beat_hang_app:app``; settings come from the
environment.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType

from tasklane.beat.scheduler import create_beat_app

#: Longest hang, should the test never release it.
MAX_HANG = 60.0

app = create_beat_app()
_released = threading.Event()


def _hang(signum: int, frame: FrameType | None) -> None:
    # Python runs signal handlers in the main thread, which is Beat's tick loop: it blocks here
    # (between two ticks or inside one) as on a stuck call, while the probe thread runs on.
    _released.clear()
    deadline = time.monotonic() + MAX_HANG
    while not _released.is_set() and time.monotonic() < deadline:
        time.sleep(0.1)  # SIGUSR2's handler runs in here, nested, and sets the event


def _release(signum: int, frame: FrameType | None) -> None:
    _released.set()


signal.signal(signal.SIGUSR1, _hang)
signal.signal(signal.SIGUSR2, _release)
