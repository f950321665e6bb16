"""``tasklane flower``: a real Flower process watching a real notifier worker on a real broker."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tasklane.cli.main import app as cli
from tasklane.contracts import REGISTRY
from tasklane.observability.flower import create_flower_app
from tasklane.publish import Publisher
from tasklane.wire.routing import dlq_name, queue_name
from tasklane_dev.sinks import WebhookSink, free_port
from tests.support import eventually
from tests.support.harness import BrokerEnv, WorkerProcess

TASKLANE = str(Path(sys.executable).with_name("tasklane"))
PASSWORD = "flower-pass-0123"  # 16 characters
AUTH = ("ops", PASSWORD)


class Flower:
    """A ``tasklane flower`` process on a free port, in a process group of its own."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **env,
            "TASKLANE_FLOWER_BASIC_AUTH": f"{AUTH[0]}:{AUTH[1]}",
            "TASKLANE_FLOWER_PORT": str(self.port),
            "TASKLANE_FLOWER_ADDRESS": "127.0.0.1",
        }
        # The worker harness serves: a Popen in a new session that stop() ends by process group.
        self.process = WorkerProcess.from_command([TASKLANE, "flower"], env, log)
        try:
            eventually(
                self._answers, timeout=60, interval=0.2, message=f"Flower on port {self.port}"
            )
        except BaseException:
            # The fixture only stops what it was handed: a Flower that never answered would
            # outlive the test.
            self.process.stop()
            raise

    def _answers(self) -> bool:
        if self.process.process.poll() is not None:
            raise AssertionError(f"flower exited:\n{self.process.output()}")
        try:
            return httpx.get(f"{self.url}/healthcheck", timeout=1).text == "OK"
        except httpx.TransportError:
            return False

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("auth", AUTH)
        return httpx.get(f"{self.url}{path}", timeout=5, **kwargs)

    def json(self, path: str) -> Any:
        response = self.get(path)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def start_flower(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Flower]]:
    started: list[Flower] = []

    def start(env: dict[str, str]) -> Flower:
        flower = Flower(env, tmp_path / f"flower{len(started)}.log")
        started.append(flower)
        return flower

    yield start
    for flower in started:
        flower.process.stop()


@pytest.fixture
def heartbeat_worker(broker: BrokerEnv, tmp_path: Path) -> Iterator[tuple[str, WorkerProcess]]:
    """A notifier worker that sends heartbeats, as production workers do.

    The ``start_worker`` harness passes ``--without-heartbeat``. Flower would still list such a
    worker (it asks workers by remote control) but show it offline while it idles: online means
    a recent heartbeat (or task event).
    """
    name = f"notifier-{uuid.uuid4().hex[:6]}@flowertest"
    command = [TASKLANE, "worker", "notifier", "--concurrency", "1", "--loglevel", "INFO",
               "--", "--without-gossip", "--without-mingle", "-n", name]  # fmt: skip
    env = {
        **broker.env(),
        "TASKLANE_NOTIFIER_WEBHOOK_TIMEOUT": "2",
        # The webhook sink listens on loopback, which the SSRF guard refuses by default.
        "TASKLANE_NOTIFIER_WEBHOOK_ALLOW": "127.0.0.1/32",
    }
    worker = WorkerProcess.from_command(command, env, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        yield name, worker
    finally:
        worker.stop()


def test_flower_shows_the_online_worker_and_its_finished_task(
    broker: BrokerEnv,
    webhook_sink: WebhookSink,
    heartbeat_worker: tuple[str, WorkerProcess],
    start_flower: Callable[[dict[str, str]], Flower],
) -> None:
    name, worker_process = heartbeat_worker
    flower = start_flower(broker.env())

    def listed() -> dict[str, Any] | None:
        # refresh=1: Flower asks the workers by remote control now instead of using its cache.
        workers: dict[str, Any] = flower.json("/api/workers?refresh=1")
        return workers.get(name)

    worker = eventually(listed, timeout=15, interval=0.2, message=f"{name} in /api/workers")
    queues = {q["name"] for q in worker["active_queues"]}
    assert f"{broker.namespace}notifier.im" in queues

    def online() -> dict[str, Any] | None:
        # The dashboard's rows. On start Flower asks every worker for one heartbeat, and counts
        # task events as signs of life too: only further heartbeats prove the worker's own.
        rows = flower.json("/?json=1")["data"]
        row = next((r for r in rows if r["hostname"] == name), None)
        return row if row and row["status"] and len(row["heartbeats"]) >= 2 else None

    eventually(online, timeout=15, interval=0.2, message=f"{name} online from its heartbeats")

    # The worker starts without task events (TASKLANE_TASK_EVENTS defaults to false): Flower turns
    # them on by remote control, every few seconds, for the workers it sees.
    def events_enabled() -> bool | None:
        return "enabled by remote" in worker_process.output() or None

    eventually(
        events_enabled, timeout=15, interval=0.2, message=f"{name}: task events enabled by Flower"
    )

    with Publisher(broker.settings) as publisher:
        handle = publisher.publish(
            "notifier.im.send",
            {"channel": "slack", "url": f"{webhook_sink.url}/hook", "text": "seen by Flower"},
        )
        assert handle.get(timeout=20).status_code == 200

    def finished() -> dict[str, Any] | None:
        response = flower.get(f"/api/task/info/{handle.id}")
        info: dict[str, Any] | None = response.json() if response.status_code == 200 else None
        return info if info and info.get("state") == "SUCCESS" else None

    info = eventually(
        finished, timeout=15, interval=0.2, message=f"task {handle.id} SUCCESS in Flower"
    )
    assert info["name"] == "notifier.im.send"
    assert info["worker"] == name
    assert handle.id in flower.json(f"/api/tasks?workername={name}&state=SUCCESS")


def test_flower_refuses_missing_and_wrong_credentials(
    redis_url: str, start_flower: Callable[[dict[str, str]], Flower]
) -> None:
    # Authentication does not depend on the broker: Redis alone.
    flower = start_flower({"TASKLANE_BROKER_URL": redis_url})
    assert flower.get("/api/workers").status_code == 200
    assert flower.get("/").status_code == 200
    for auth in (None, (AUTH[0], "wrong-password-0123"), ("eve", PASSWORD)):
        assert flower.get("/api/workers", auth=auth).status_code == 401, auth
        page = flower.get("/", auth=auth)
        assert page.status_code == 401, auth
        # The UI's challenge makes browsers ask for the password; the API sends none.
        assert page.headers["WWW-Authenticate"] == 'Basic realm="flower"'
    # Flower serves probes and Prometheus metrics without auth (documented in observability.md).
    assert flower.get("/healthcheck", auth=None).status_code == 200
    assert flower.get("/metrics", auth=None).status_code == 200
    # The password is in Flower's environment, not on its command line, which anyone can read.
    cmdline = Path(f"/proc/{flower.process.process.pid}/cmdline").read_bytes()
    assert b"celery" in cmdline and PASSWORD.encode() not in cmdline


def test_flower_app_knows_every_queue_and_registers_no_task(broker: BrokerEnv) -> None:
    app = create_flower_app(broker.settings)
    queues = {queue_name(contract, broker.namespace) for contract in REGISTRY}
    # What the broker tab lists while no worker reports its queues: work queues and DLQs.
    assert {q.name for q in app.conf.task_queues} == queues | {dlq_name(q) for q in queues}
    assert all(name.startswith("celery.") for name in app.tasks)  # Celery's built-ins only
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)


def test_flower_refuses_to_start_without_basic_auth(redis_url: str) -> None:
    # The real console script, as a deployment runs it.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKLANE_", "FLOWER_"))}
    result = subprocess.run(
        [TASKLANE, "flower"],
        env={**env, "TASKLANE_BROKER_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "TASKLANE_FLOWER_BASIC_AUTH" in result.stderr


def test_flower_refuses_a_short_password_without_printing_it(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKLANE_BROKER_URL", redis_url)
    monkeypatch.setenv("TASKLANE_FLOWER_BASIC_AUTH", "ops:tooshort1")
    result = CliRunner().invoke(cli, ["flower"])
    assert result.exit_code == 2
    assert "TASKLANE_FLOWER_BASIC_AUTH" in result.output and "12 characters" in result.output
    assert "tooshort1" not in result.output


def test_print_shows_the_command_with_passwords_masked(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKLANE_BROKER_URL", redis_url)
    monkeypatch.setenv("TASKLANE_FLOWER_BASIC_AUTH", f"ops:{PASSWORD},ann:{PASSWORD}")
    monkeypatch.setenv("TASKLANE_FLOWER_URL_PREFIX", "/ops/flower/")
    result = CliRunner().invoke(cli, ["flower", "--print", "--", "--purge_offline_workers=60"])
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    # The credentials go in Flower's own variable, never on the command line (ps shows argv).
    assert shlex.split(result.output) == [
        "FLOWER_BASIC_AUTH=ops:***,ann:***",
        sys.executable, "-m", "celery", "-A", "tasklane.observability.flower_app", "flower",
        "--port=5555", "--address=0.0.0.0", "--enable_events=True",
        "--url_prefix=ops/flower", "--purge_offline_workers=60",
    ]  # fmt: skip
