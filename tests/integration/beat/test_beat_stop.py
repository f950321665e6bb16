"""A Beat stopped cleanly (SIGTERM, or SIGINT at a terminal) leaves at once: lock and status.

Real ``tasklane beat`` processes; what is asserted right after one exits holds at that moment,
without waiting for the lock's TTL or the status's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tasklane.beat.client import Schedules
from tests.support import eventually
from tests.support.harness import BrokerEnv, WorkerProcess

STARTUP = 60.0

StartBeat = Callable[[], WorkerProcess]


def process_of(schedules: Schedules, beat: WorkerProcess) -> str | None:
    """The name ``beat`` reports under (``<host>:<pid>:<random>``), once it has reported."""
    names = [
        s.process for s in schedules.beats() if s.process.split(":")[1] == str(beat.process.pid)
    ]
    return names[0] if names else None


def beat_health(env: BrokerEnv) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).with_name("tasklane")), "beat-health"],
        env={**os.environ, **env.env()},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_beat_lets_the_lock_go_and_leaves_the_status_list_at_once(
    env: BrokerEnv, schedules: Schedules, start_beat: StartBeat, stop: signal.Signals
) -> None:
    active_beat = start_beat()
    active = eventually(
        lambda: process_of(schedules, active_beat), timeout=STARTUP, message="the first beat"
    )
    eventually(lambda: schedules.store.lock_holder() == active, timeout=10, message="its lock")
    standby_beat = start_beat()
    standby = eventually(
        lambda: process_of(schedules, standby_beat), timeout=STARTUP, message="a standby"
    )

    os.killpg(active_beat.process.pid, stop)
    assert active_beat.process.wait(20) == 0, active_beat.output()
    # At once: neither listed nor holding the lock, well within its TTL (2 s) and its status's.
    assert active not in [status.process for status in schedules.beats()]
    assert schedules.store.lock_holder() != active
    eventually(
        lambda: [s.process for s in schedules.beats() if s.holds_lock] == [standby],
        timeout=10,
        message="the standby to take over",
    )
    probe = beat_health(env)
    assert probe.returncode == 0 and probe.stdout.startswith(f"{standby}: active"), probe

    os.killpg(standby_beat.process.pid, stop)
    assert standby_beat.process.wait(20) == 0, standby_beat.output()
    assert schedules.beats() == [] and schedules.store.lock_holder() is None
    probe = beat_health(env)
    assert probe.returncode != 0
    assert f"no Beat process on {socket.gethostname()} has reported" in probe.stderr
