"""Per-task directories of the media service (:mod:`media.workspace`)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from media.workspace import workspace


class SoftLimit(Exception):
    """Stands in for Celery's soft time limit, which a signal raises wherever Python runs next."""


def _raise_once_in_removal(after_lines: int) -> None:
    """Raise :class:`SoftLimit` at the ``after_lines``-th line run inside ``shutil`` (rmtree)."""
    seen = 0

    def in_shutil(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal seen
        if event == "line":
            seen += 1
            if seen == after_lines:
                sys.settrace(None)
                raise SoftLimit
        return in_shutil

    def calls(frame: FrameType, event: str, arg: Any) -> Any:
        return in_shutil if frame.f_code.co_filename.endswith("shutil.py") else None

    sys.settrace(calls)


@pytest.mark.parametrize("after_lines", [1, 5, 20, 60])
@pytest.mark.parametrize("ending", ["returning", "already stopped by its own check"])
def test_a_soft_limit_landing_inside_the_removal_still_leaves_no_files(
    tmp_path: Path, after_lines: int, ending: str
) -> None:
    """Celery's soft limit signal can land in the removal: as the task returns, or while a first
    stop (the transcoder's own check of the limit) unwinds.

    The removal it interrupts is finished, and the task still stops with the limit.
    """
    try:
        with pytest.raises(SoftLimit), workspace(tmp_path) as work:
            for index in range(4):
                (work / f"part{index}").mkdir()
                for name in ("a.ts", "b.ts"):
                    (work / f"part{index}" / name).write_bytes(b"frames")
            _raise_once_in_removal(after_lines)
            if ending != "returning":
                raise SoftLimit
    finally:
        sys.settrace(None)
    assert list(tmp_path.iterdir()) == []


def test_a_workspace_is_removed_when_the_task_returns(tmp_path: Path) -> None:
    with workspace(tmp_path) as work:
        (work / "output.mp4").write_bytes(b"mp4")
    assert list(tmp_path.iterdir()) == []
