"""A transcode's own check of its soft limit, and the pool's signal after it (media.soft_limit)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from billiard.exceptions import SoftTimeLimitExceeded

from media.soft_limit import (
    SOFT_LIMIT_SIGNAL,
    PoolSignalHold,
    release_after_run,
    soft_limit_watch,
)
from tests.unit.media.signal_points import SignalAt, stop

pytestmark = [
    pytest.mark.skipif(SOFT_LIMIT_SIGNAL is None, reason="no SIGUSR1 on this platform"),
    pytest.mark.usefixtures("soft_limit_handler"),
]


def _stopped_by_its_own_check() -> None:
    """Frames checked until the (tiny) limit has passed, as a transcode's loop checks them."""
    passed = soft_limit_watch(1e-6)
    with pytest.raises(SoftTimeLimitExceeded):
        while not passed():
            pass


def _signal_lands() -> bool:
    """Whether the pool's signal, sent now, raises the soft limit here."""
    assert SOFT_LIMIT_SIGNAL is not None
    try:
        signal.raise_signal(SOFT_LIMIT_SIGNAL)
    except SoftTimeLimitExceeded:
        return True
    return False


def test_a_run_without_its_limit_passed_goes_on() -> None:
    passed = soft_limit_watch(3600)
    assert passed() is False
    assert soft_limit_watch(None)() is False  # no limit: never stopped by the check


def test_the_pools_signal_after_the_runs_own_stop_is_ignored_until_the_run_ends() -> None:
    """Celery stores the failure and Tasklane writes the dead letter after the stop: the pool's
    signal, still on its way, must not cut those short. The next run has its limit again."""
    assert SOFT_LIMIT_SIGNAL is not None
    handler = signal.getsignal(SOFT_LIMIT_SIGNAL)
    _stopped_by_its_own_check()
    try:
        assert _signal_lands() is False  # the failure handling goes on
    finally:
        release_after_run()  # task_postrun
    assert signal.getsignal(SOFT_LIMIT_SIGNAL) is handler
    assert _signal_lands() is True


def test_a_run_that_was_not_stopped_leaves_the_signal_as_it_was() -> None:
    release_after_run()
    assert _signal_lands() is True


def test_the_signal_landing_as_the_check_holds_it_still_leaves_it_restored_after_the_run() -> None:
    """The pool's signal may come just as the check fires: wherever it lands in the hold, the run
    stops with the limit and the next run finds the pool's handler in place."""
    assert SOFT_LIMIT_SIGNAL is not None
    handler = signal.getsignal(SOFT_LIMIT_SIGNAL)
    landings = 0
    while True:
        landings += 1
        hold = PoolSignalHold()
        signal_at = SignalAt(landings)
        signal_at.start()
        try:
            hold.hold()
        except SoftTimeLimitExceeded:
            pass  # the pool's stop came first: the run stops all the same
        finally:
            stop(signal_at.previous)
        hold.release()
        assert signal.getsignal(SOFT_LIMIT_SIGNAL) is handler, landings
        if not signal_at.sent:
            break
    assert landings > 3, landings


def test_the_media_app_releases_the_hold_when_a_run_ends(redis_url: str) -> None:
    """Wired in the app a media worker loads: Celery's task_postrun puts the handler back."""
    script = """
import signal
from celery.signals import task_postrun
import media.app
from media.soft_limit import POOL_SIGNAL

def pools_handler(signum, frame):
    pass

signal.signal(signal.SIGUSR1, pools_handler)
POOL_SIGNAL.hold()
assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
task_postrun.send(sender=None, task_id="a-run", task=None, state="FAILURE")
print(signal.getsignal(signal.SIGUSR1) is pools_handler)
"""
    env = {**os.environ, "TASKLANE_BROKER_URL": redis_url}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
