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
    with tempfile.TemporaryDirectory(prefix=PREFIX, dir=parent) as path:
        yield Path(path)


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
