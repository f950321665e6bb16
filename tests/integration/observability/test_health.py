"""Worker probes: readiness follows the broker connection; liveness follows the main loop."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path

from celery import Celery

from tasklane_dev.sinks import free_port
from tests.support import eventually
from tests.support.harness import RedisServer, WorkerProcess


def probe(port: int, path: str) -> int:
    try:
        return int(urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3).status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def start(tmp_path: Path, broker_url: str, port: int, **env: str) -> WorkerProcess:
    command = [
        sys.executable, "-m", "celery", "-A", "tests.support.flaky_service", "worker",
        "--concurrency", "1", "--loglevel", "INFO",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    worker_env = {
        "TASKLANE_BROKER_URL": broker_url,
        "TASKLANE_RESULT_BACKEND": broker_url,
        "TASKLANE_METRICS_PORT": str(port),
        **env,
    }
    worker = WorkerProcess.from_command(command, worker_env, tmp_path / "worker.log")
    worker.wait_ready()
    return worker


def test_readiness_flips_when_the_broker_goes_and_comes_back_liveness_does_not(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path).start()
    port = free_port()
    worker = start(tmp_path, server.url, port)
    try:
        eventually(lambda: probe(port, "/readyz") == 200, timeout=10, interval=0.2, message="ready")
        assert probe(port, "/livez") == 200
        server.kill()
        lives: list[int] = []

        def not_ready() -> bool:
            lives.append(probe(port, "/livez"))
            return probe(port, "/readyz") == 503

        eventually(not_ready, timeout=20, interval=0.2, message="readiness to drop")
        server.start()  # the same port: the worker reconnects on its own

        def ready_again() -> bool:
            lives.append(probe(port, "/livez"))
            return probe(port, "/readyz") == 200

        eventually(ready_again, timeout=40, interval=0.2, message="readiness to come back")
        assert set(lives) == {200}, lives
        assert worker.process.poll() is None
    finally:
        worker.stop()
        server.kill()


def test_liveness_fails_while_the_main_loop_hangs(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    worker = start(tmp_path, redis_url, port, TASKLANE_LIVENESS_TIMEOUT="2")
    control = Celery("probe", broker=redis_url, set_as_current=False)
    try:
        eventually(lambda: probe(port, "/livez") == 200, timeout=10, interval=0.2, message="live")
        control.control.broadcast("hang", arguments={"seconds": 6}, reply=False)
        eventually(
            lambda: probe(port, "/livez") == 503,
            timeout=6,
            interval=0.2,
            message="liveness to fail",
        )
        assert probe(port, "/readyz") == 200  # still connected: only the loop is stuck
        eventually(
            lambda: probe(port, "/livez") == 200,
            timeout=15,
            interval=0.2,
            message="liveness to recover",
        )
    finally:
        control.close()
        worker.stop()
