"""Per-task directories of the media service (:mod:`media.workspace`)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from billiard.exceptions import SoftTimeLimitExceeded

from media.soft_limit import SOFT_LIMIT_SIGNAL
from media.workspace import in_workspace
from tests.unit.media.signal_points import SignalAt, stop

pytestmark = pytest.mark.skipif(SOFT_LIMIT_SIGNAL is None, reason="no SIGUSR1 on this platform")


def _fill(work: Path) -> str:
    for index in range(3):
        (work / f"part{index}").mkdir()
        for name in ("a.ts", "b.ts"):
            (work / f"part{index}" / name).write_bytes(b"frames")
    return "done"


def _fill_and_stop(work: Path) -> str:
    """A transcode stopped by its own per-frame check of the limit, before the signal came."""
    _fill(work)
    raise SoftTimeLimitExceeded()


@pytest.mark.usefixtures("soft_limit_handler")
@pytest.mark.parametrize("ending", ["returning", "already stopped by its own check"])
def test_the_soft_limit_landing_at_any_point_leaves_no_files_and_stops_the_task(
    tmp_path: Path, ending: str
) -> None:
    """Celery's soft limit signal may land anywhere: as the directory is made, in the task, as it
    returns, while the transcoder's own stop (its check of the limit) unwinds, in the removal.

    Wherever it lands, the directory is gone and the task stops with the limit, not with an
    error of the removal it interrupted, and not silently.
    """
    work = _fill if ending == "returning" else _fill_and_stop
    landings = 0
    while True:
        landings += 1
        stopped: BaseException | None = None
        signal_at = SignalAt(landings)
        signal_at.start()
        try:
            in_workspace(tmp_path, work)
        except BaseException as exc:  # noqa: BLE001 - the type is what is checked
            stopped = exc  # held, as Celery holds a failure's traceback while it dead-letters
        finally:
            stop(signal_at.previous)
        if not signal_at.sent:
            break  # past the last point: every landing was tried
        assert list(tmp_path.iterdir()) == [], f"left behind with the signal at point {landings}"
        assert isinstance(stopped, SoftTimeLimitExceeded), (landings, stopped)
        assert SOFT_LIMIT_SIGNAL not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    assert landings > 100  # the points of mkdir, the task's writes, rmtree and the exits


def test_a_workspace_is_removed_when_the_task_returns(tmp_path: Path) -> None:
    def write(work: Path) -> int:
        return (work / "output.mp4").write_bytes(b"mp4")

    assert in_workspace(tmp_path, write) == 3
    assert list(tmp_path.iterdir()) == []


def test_the_soft_limit_signal_is_not_held_back_in_the_task(
    tmp_path: Path, soft_limit_handler: None
) -> None:
    """Only the removal holds the signal back: inside the workspace it lands at once."""
    assert SOFT_LIMIT_SIGNAL is not None

    def signalled(work: Path) -> None:
        assert SOFT_LIMIT_SIGNAL is not None
        signal.raise_signal(SOFT_LIMIT_SIGNAL)
        pytest.fail("the signal was held back")

    with pytest.raises(SoftTimeLimitExceeded):
        in_workspace(tmp_path, signalled)
    assert SOFT_LIMIT_SIGNAL not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
