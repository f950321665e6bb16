"""Beat's probes: readiness follows Redis (lock and schedule store); liveness follows the tick loop.

Real ``tasklane beat`` processes. The outage test kills a ``redis-server`` the test started
itself; the hang test blocks Beat's tick loop in a signal handler (``beat_hang_app``) while the
probe thread runs on.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tasklane.beat.client import Schedules
from tasklane.wire.headers import SCHEDULE
from tasklane_dev.sinks import free_port
from tests.integration.beat.test_beat import every, sent
from tests.integration.observability.test_health import probe
from tests.support import eventually
from tests.support.harness import BrokerEnv, RedisServer, WorkerProcess, cleanup

#: Short, so that staying live through the outage means the loop really kept ticking.
LIVE_TIMEOUT = 2.0

StartBeat = Callable[..., tuple[WorkerProcess, int]]


def answer(port: int, path: str) -> str:
    """The body of a probe, whatever its status (it says why)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode())


def serving(port: int) -> bool:
    try:
        return probe(port, "/livez") > 0
    except OSError:
        return False  # not listening yet: Beat's first tick starts the server


def watch(port: int, path: str, seconds: float) -> list[int]:
    """Every answer of ``path`` over ``seconds``, polled."""
    answers: list[int] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answers.append(probe(port, path))
        time.sleep(0.2)
    return answers


def namespaced(redis_url: str) -> BrokerEnv:
    return BrokerEnv("redis", redis_url, redis_url, f"t{uuid.uuid4().hex[:10]}.")


@pytest.fixture
def start_beat(tmp_path: Path) -> Iterator[StartBeat]:
    """Start ``tasklane beat`` with probes on a free port, once serving; stopped afterwards."""
    started: list[WorkerProcess] = []

    def start(broker: BrokerEnv, *args: str) -> tuple[WorkerProcess, int]:
        port = free_port()
        command = [str(Path(sys.executable).with_name("tasklane")), "beat", *args]
        env = {
            **broker.env(),
            "TASKLANE_METRICS_PORT": str(port),
            "TASKLANE_BEAT_LOCK_TTL": "2",
            "TASKLANE_BEAT_LIVENESS_TIMEOUT": str(LIVE_TIMEOUT),
        }
        beat = WorkerProcess.from_command(command, env, tmp_path / f"beat{len(started)}.log")
        started.append(beat)
        eventually(
            lambda: serving(port) or beat.process.poll() is not None, timeout=30, message="probes"
        )
        assert beat.process.poll() is None, beat.output()
        return beat, port

    yield start
    for beat in started:
        beat.stop()


def fires(broker: BrokerEnv, name: str) -> Callable[[], bool]:
    """Add a one-second interval entry ``name``; a check that Beat published it."""
    with Schedules(broker.settings) as schedules:
        schedules.add(every(1, name))
    return lambda: any(h.get(SCHEDULE) == name for h in sent(broker))


def test_readiness_follows_redis_out_and_back_liveness_does_not_move(
    tmp_path: Path, start_beat: StartBeat
) -> None:
    server = RedisServer(tmp_path).start()
    broker = BrokerEnv("redis", server.url, server.url, "")
    try:
        beat, port = start_beat(broker)
        eventually(lambda: probe(port, "/readyz") == 200, timeout=30, message="ready")
        assert answer(port, "/readyz").startswith("active")
        eventually(fires(broker, "before"), timeout=15, message="a firing before the outage")
        server.kill()
        lives: list[int] = []

        def not_ready() -> bool:
            lives.append(probe(port, "/livez"))
            return probe(port, "/readyz") == 503

        eventually(not_ready, timeout=10, message="readiness to drop")
        assert answer(port, "/readyz").startswith("Redis unreachable")
        # Three liveness timeouts without Redis: a loop that stopped ticking would be 503 by now.
        lives += watch(port, "/livez", 3 * LIVE_TIMEOUT)
        assert probe(port, "/readyz") == 503
        server.start()  # the same port, empty: Beat reconnects by itself on its next tick

        def ready_again() -> bool:
            lives.append(probe(port, "/livez"))
            return probe(port, "/readyz") == 200

        eventually(ready_again, timeout=20, message="readiness to come back")
        assert set(lives) == {200}, lives
        assert answer(port, "/readyz").startswith("active")
        eventually(fires(broker, "after"), timeout=15, message="a firing after the outage")
        assert beat.process.poll() is None
        assert "Redis unreachable" in beat.output() and "Redis reachable again" in beat.output()
    finally:
        server.kill()


def test_liveness_fails_while_the_tick_loop_hangs_and_recovers(
    redis_url: str, start_beat: StartBeat
) -> None:
    broker = namespaced(redis_url)
    try:
        beat, port = start_beat(broker, "--app", "tests.support.beat_hang_app:app")
        eventually(lambda: probe(port, "/readyz") == 200, timeout=30, message="ready")
        assert set(watch(port, "/livez", 2 * LIVE_TIMEOUT)) == {200}  # not hung: stays live
        os.kill(beat.process.pid, signal.SIGUSR1)  # the tick loop hangs until SIGUSR2
        eventually(
            lambda: probe(port, "/livez") == 503,
            timeout=4 * LIVE_TIMEOUT,
            message="liveness to fail",
        )
        assert "stalled" in answer(port, "/livez")
        assert probe(port, "/readyz") == 200  # the last tick reached Redis: only the loop is stuck
        os.kill(beat.process.pid, signal.SIGUSR2)
        eventually(lambda: probe(port, "/livez") == 200, timeout=20, message="liveness to recover")
        assert beat.process.poll() is None
    finally:
        cleanup(broker)


def test_a_standby_beat_is_ready_and_live_like_the_active_one(
    redis_url: str, start_beat: StartBeat
) -> None:
    broker = namespaced(redis_url)
    try:
        ports = [start_beat(broker)[1] for _ in range(2)]
        eventually(
            lambda: all(probe(p, "/readyz") == 200 for p in ports), timeout=30, message="both ready"
        )
        assert [probe(port, "/livez") for port in ports] == [200, 200]
        roles = sorted(answer(port, "/readyz").split(":")[0] for port in ports)
        assert roles == ["active", "standby"], roles
    finally:
        cleanup(broker)
