"""Stop signals for the demo stack: SIGINT, SIGTERM and SIGHUP unwind it like Ctrl-C does.

A signal raises :class:`Stopped` in the main thread, so every ``with`` block of the stack runs its
clean-up. A watch thread also stops the stack when its parent dies, or when GNU make, which does
not pass SIGINT or SIGHUP on to its recipe but waits for it, receives one of them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_MAKES = {"make", "gmake"}


class Stopped(BaseException):
    """A stop signal arrived; a ``BaseException`` like ``KeyboardInterrupt``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """128 plus the signal's number, what a shell reports for a process the signal ended."""
        return 128 + self.signum


class StopSignals:
    """Turns stop signals into :class:`Stopped` while active; later signals wait for clean-up.

    Only the first signal raises: the clean-up it starts (a warm shutdown of the workers, bounded)
    is not interrupted by a second Ctrl-C.
    """

    def __init__(self, poll_seconds: float = 0.2) -> None:
        self._poll = poll_seconds
        self._previous: dict[int, object] = {}
        self._deferring = 0
        self._pending: int | None = None
        self._stopping = False
        self._done = threading.Event()

    def __enter__(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        threading.Thread(target=self._watch_parent, name="parent-watch", daemon=True).start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:
            return
        if self._deferring:
            self._pending = self._pending or signum
            return
        self._stopping = True
        raise Stopped(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold a stop signal back until the block ends: a process started in it is recorded."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if not self._deferring and self._pending is not None and not self._stopping:
            self._stopping = True
            raise Stopped(self._pending)

    def wait(self) -> None:
        """Block until a stop signal raises :class:`Stopped`."""
        while True:
            # A short sleep, not signal.pause(): a signal another thread took still runs its
            # handler here within the half second.
            time.sleep(0.5)

    def _raise_in_main(self, signum: int) -> None:
        signal.pthread_kill(threading.main_thread().ident or 0, signum)

    def _watch_parent(self) -> None:
        parent = os.getppid()
        caught = _caught_signals(parent) if _command(parent) in _MAKES else None
        while not self._done.wait(self._poll):
            if os.getppid() != parent:
                # The parent is gone (killed, or its terminal closed): nobody waits for the stack.
                self._raise_in_main(signal.SIGHUP)
                return
            now = _caught_signals(parent) if caught is not None else None
            if caught is None or now is None:
                continue
            # make resets a fatal signal's handler to the default before it waits for its
            # children, so a stop signal leaving its caught set means make was told to stop.
            lost = caught - now
            if lost:
                self._raise_in_main(min(lost))
                return


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _caught_signals(pid: int) -> set[int] | None:
    """The stop signals ``pid`` has handlers for (``SigCgt`` in ``/proc/<pid>/status``)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            mask = int(line.split()[1], 16)
            return {int(s) for s in STOP_SIGNALS if mask & (1 << (int(s) - 1))}
    return None
