"""Per-task temporary directories, and the removal of those a killed process left behind."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

PREFIX = "tasklane-media-"


@contextmanager
def workspace(parent: Path | None = None) -> Iterator[Path]:
    """A fresh directory removed on exit, whatever ends the task (soft time limit included)."""
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
    try:
        yield path
    finally:
        _remove(path)


def _remove(path: Path) -> None:
    """``rmtree`` carried to its end even when an exception lands in the middle of it.

    A soft time limit is raised by a signal wherever Python runs next: possibly inside this
    removal, while a first stop (the transcoder's own check of the limit) is unwinding, or just
    as the task returns. The removal is finished, and that exception raised after it.
    """
    interrupted: BaseException | None = None
    while True:
        try:
            shutil.rmtree(path, ignore_errors=True)  # errors of its own are not raised
            break
        except Exception as exc:  # raised into it from outside: finish, then pass it on
            interrupted = exc
    if interrupted is not None:
        raise interrupted


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
