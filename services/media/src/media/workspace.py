"""Per-task temporary directories, and the removal of those a killed process left behind."""

from __future__ import annotations

import logging
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterable
from importlib import import_module
from pathlib import Path
from typing import TypeVar

from media.soft_limit import SOFT_LIMIT_SIGNAL

logger = logging.getLogger(__name__)

PREFIX = "tasklane-media-"

T = TypeVar("T")

_DEFAULT_PARENT = Path(tempfile.gettempdir())

# The C function under signal.py's Python wrapper (see _remove_held).
_set_mask: Callable[[int, Iterable[int]], object] = import_module("_signal").pthread_sigmask


def in_workspace(parent: Path | None, work: Callable[[Path], T]) -> T:
    """``work`` run in a fresh directory that is removed whatever ends it (soft limit included).

    The soft limit's signal raises wherever Python next checks for signals: on entering a
    function, after a call, on a loop's jump back. Every such point between the directory's
    creation and its removal lies inside the ``try`` below, so no landing leaks the directory:

    - the name is chosen before the directory exists and created inside the ``try``
      (``mkdtemp`` creates it first and then builds the path in Python, outside any ``try``;
      its first call in a process also takes a lock that a landing there leaves held, so the
      next task waits on it forever; the default parent is read once, at import, for that);
    - ``work`` is a function, not the body of a ``with``: a context manager's ``__exit__`` is
      entered, a point where the signal lands, before its cleanup's ``try``; here an exception
      of ``work`` goes straight to the ``finally``;
    - the removal loop is written inline, as a function called from ``finally`` could be
      interrupted on entry, before its own ``try``;
    - ``rmtree`` runs with the signal held back, as with ``ignore_errors`` it swallows an
      ``Exception`` (the soft limit is one) raised into it, leaving the directory and losing
      the stop. Held back, the signal lands after the removal and is passed on.
    """
    path = (parent or _DEFAULT_PARENT) / f"{PREFIX}{secrets.token_hex(8)}"
    try:
        path.mkdir(mode=0o700)
        return work(path)
    finally:
        interrupted: BaseException | None = None
        while True:
            try:
                _remove_held(path)
                break
            except BaseException as exc:  # raised into the removal from outside: finish it
                interrupted = exc
        if interrupted is not None:
            raise interrupted


def _remove_held(path: Path) -> None:
    """``rmtree`` with the soft limit's signal held back until it has finished.

    The mask is set by the C function itself: ``signal.pthread_sigmask`` wraps it in Python,
    and a signal landing on entering that wrapper would skip the unblock and leave the signal
    held for every later task of the process. The signal is unblocked unconditionally, as
    nothing else in a pool process holds it back.
    """
    if SOFT_LIMIT_SIGNAL is None:
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        _set_mask(signal.SIG_BLOCK, (SOFT_LIMIT_SIGNAL,))
        shutil.rmtree(path, ignore_errors=True)  # errors of its own are not raised
    finally:
        _set_mask(signal.SIG_UNBLOCK, (SOFT_LIMIT_SIGNAL,))


def remove_stale(parent: Path | None, older_than: float) -> int:
    """Remove task directories untouched for ``older_than`` seconds; how many were removed.

    A pool process killed by the hard time limit cannot clean up after itself; a worker
    starting on the same volume does it. Anything younger may belong to a running task.
    """
    root = Path(parent or tempfile.gettempdir())
    cutoff = time.time() - older_than
    removed = 0
    for path in root.glob(f"{PREFIX}*"):
        try:
            if path.is_dir() and path.stat().st_mtime < cutoff:
                shutil.rmtree(path)
                removed += 1
        except OSError:
            logger.warning("could not remove %s", path, exc_info=True)
    return removed
