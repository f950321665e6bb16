"""A watchdog for the demo stack: stops it when the demo dies without doing so (``kill -9``).

The demo starts ``python -m tasklane_dev.reaper`` in its own session and tells it, one line on its
stdin at a time, what it started: ``group <pgid>`` (a worker, stopped warmly), ``pid <pid>`` (the
broker) and ``path <dir>`` (a temporary folder). ``done`` means the demo cleaned up itself; end of
input without it means the demo is gone, and the watchdog does the clean-up in that order.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TextIO

# A worker's warm shutdown finishes its running tasks; after this it is killed.
WARM_SHUTDOWN_SECONDS = 10.0

Send = Callable[[int], None]


def _gone(send: Send, signum: int) -> bool:
    """Send ``signum``; True if nothing of ours is there to receive it."""
    try:
        send(signum)
    except ProcessLookupError:
        return True
    except PermissionError:  # a reused id that is not ours any more
        return True
    return False


def group(pgid: int) -> Send:
    """Signals a whole process group: a Celery worker and its pool processes."""
    return lambda sig: os.killpg(pgid, sig)


def process(pid: int) -> Send:
    """Signals one process."""
    return lambda sig: os.kill(pid, sig)


def stop(targets: list[Send], timeout: float = WARM_SHUTDOWN_SECONDS) -> None:
    """SIGTERM to every target at once (a Celery worker's warm shutdown), SIGKILL after ``timeout``
    to those still there."""
    alive = [send for send in targets if not _gone(send, signal.SIGTERM)]
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [send for send in alive if not _gone(send, 0)]
    for send in alive:
        _gone(send, signal.SIGKILL)


def watch(lines: TextIO) -> None:
    """Read what the demo started until ``done``; at end of input, stop all of it."""
    groups: list[int] = []
    pids: list[int] = []
    paths: list[str] = []
    for line in lines:
        kind, _, value = line.strip().partition(" ")
        if kind == "done":
            return
        if kind == "group":
            groups.append(int(value))
        elif kind == "pid":
            pids.append(int(value))
        elif kind == "path":
            paths.append(value)
    # Workers first (they may still finish tasks against the broker), then the broker, then files.
    stop([group(pgid) for pgid in groups])
    stop([process(pid) for pid in pids])
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


class Reaper:
    """The demo's side: starts the watchdog and tells it what to clean up."""

    def __enter__(self) -> Reaper:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tasklane_dev.reaper"],
            stdin=subprocess.PIPE,
            text=True,
            # Its own session: the terminal's Ctrl-C or hang-up must not end it before the demo.
            start_new_session=True,
        )
        return self

    def _tell(self, line: str) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        # The watchdog is a safety net: if it is gone, the demo still cleans up itself.
        with contextlib.suppress(BrokenPipeError):
            stdin.write(line + "\n")
            stdin.flush()

    def group(self, pgid: int) -> None:
        """A process group to stop warmly if the demo dies."""
        self._tell(f"group {pgid}")

    def process(self, pid: int) -> None:
        """A process to stop if the demo dies."""
        self._tell(f"pid {pid}")

    def path(self, path: Path | str) -> None:
        """A folder to remove if the demo dies."""
        self._tell(f"path {path}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._tell("done")
        with contextlib.suppress(BrokenPipeError):
            assert self._process.stdin is not None
            self._process.stdin.close()
        self._process.wait(10)


def main() -> None:
    """Entry point of ``python -m tasklane_dev.reaper``."""
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    watch(sys.stdin)


if __name__ == "__main__":
    main()
