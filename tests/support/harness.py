"""Brokers and worker processes for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import redis
from kombu.connection import Connection
from kombu.messaging import Producer

from tasklane.contracts import REGISTRY, ContractRegistry
from tasklane.settings import Settings, is_redis_url
from tasklane.wire.deadletter import DeadLetter, DeadLetterQueue
from tasklane.wire.protocol import CONTENT_ENCODING, CONTENT_TYPE, TaskMessage
from tasklane.wire.routing import QueueOptions, dead_letter_exchange, dlq_name, queue_name
from tests.support import eventually

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


@dataclass(frozen=True)
class BrokerEnv:
    """The broker under test and the namespace isolating this test's queues."""

    kind: str
    broker_url: str
    result_backend: str
    namespace: str

    @property
    def settings(self) -> Settings:
        return Settings(
            broker_url=self.broker_url,
            result_backend=self.result_backend,
            namespace=self.namespace,
        )

    def env(self) -> dict[str, str]:
        return {
            "TASKLANE_BROKER_URL": self.broker_url,
            "TASKLANE_RESULT_BACKEND": self.result_backend,
            "TASKLANE_NAMESPACE": self.namespace,
        }


def dead_letters(broker: BrokerEnv, queue: str) -> list[DeadLetter]:
    """The dead letters of a contract queue (``notifier.email``) in the broker's namespace."""
    with Connection(broker.broker_url) as conn:
        name = dlq_name(broker.namespace + queue)
        options = QueueOptions.of(broker.settings)
        return DeadLetterQueue(conn, name, broker.namespace, options).peek()


def wait_for_dead_letters(
    broker: BrokerEnv, queue: str, count: int, timeout: float = 30.0
) -> list[DeadLetter]:
    """Poll until ``queue``'s DLQ holds ``count`` letters; fails the test otherwise."""

    def enough() -> tuple[list[DeadLetter]] | None:
        letters = dead_letters(broker, queue)
        return (letters,) if len(letters) >= count else None

    (letters,) = eventually(
        enough,
        timeout=timeout,
        interval=0.2,
        message=lambda: f"{count} dead letters in {queue}, not {len(dead_letters(broker, queue))}",
    )
    return letters


def rabbitmq_reachable() -> bool:
    try:
        with Connection(RABBITMQ_URL, connect_timeout=2) as conn:
            conn.connect()
        return True
    except Exception:
        return False


def cleanup(env: BrokerEnv, registry: ContractRegistry = REGISTRY) -> None:
    """Delete the namespace's Redis keys and, on RabbitMQ, the queues of ``registry``."""
    for url in dict.fromkeys([env.result_backend, env.broker_url]):
        if not is_redis_url(url):
            continue
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(f"{env.namespace}*")) + list(
            client.scan_iter(f"_kombu.binding*{env.namespace}*")
        )
        if keys:
            client.delete(*keys)
    if env.kind != "rabbitmq":
        return
    with Connection(env.broker_url) as conn:
        channel = conn.channel()
        for contract in registry:
            name = queue_name(contract, env.namespace)
            for queue in (name, dlq_name(name)):
                channel.queue_delete(queue)
            channel.exchange_delete(name)
        channel.exchange_delete(dead_letter_exchange(env.namespace).name)
        channel.close()


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM a process started in a session of its own, its children too; SIGKILL after 20 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


class WorkerProcess:
    """A real ``celery worker`` of one service, started through ``tasklane worker``."""

    #: The port of its /metrics endpoint, when the test turned metrics on.
    metrics_port: int | None = None

    def __init__(self, service: str, env: dict[str, str], log: Path, concurrency: int) -> None:
        name = f"{service}-{uuid.uuid4().hex[:6]}"
        #: The worker's node name, as remote control replies name it.
        self.node = f"{name}@{socket.gethostname()}"
        command = [
            str(Path(sys.executable).with_name("tasklane")), "worker", service,
            "--concurrency", str(concurrency), "--loglevel", "INFO",
            "--", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-n", f"{name}@%h",
        ]  # fmt: skip
        self._start(command, env, log)

    @classmethod
    def recycling(
        cls, service: str, env: dict[str, str], log: Path, *, max_tasks_per_child: int
    ) -> WorkerProcess:
        """A ``-c 2`` worker whose pool children are replaced after ``max_tasks_per_child``."""
        command = [
            str(Path(sys.executable).with_name("tasklane")), "worker", service,
            "--concurrency", "2", "--loglevel", "INFO",
            "--", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--max-tasks-per-child", str(max_tasks_per_child),
            "-n", f"{service}-{uuid.uuid4().hex[:6]}@%h",
        ]  # fmt: skip
        return cls.from_command(command, env, log)

    @classmethod
    def from_command(cls, command: list[str], env: dict[str, str], log: Path) -> WorkerProcess:
        """A worker started with an explicit command (test-only services)."""
        worker = cls.__new__(cls)
        worker._start(command, env, log)
        return worker

    def _start(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log_file = log.open("ab")
        self.process = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if " ready." in self.output():
                return True
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.output()}")
            return False

        eventually(
            ready,
            timeout=timeout,
            interval=0.1,
            message=lambda: f"ready in {self.log}:\n{self.output()}",
        )

    def children(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False
        )
        return [int(pid) for pid in out.stdout.split()]

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children) at once."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        stop_process_group(self.process)
        self._log_file.close()


class RedisServer:
    """A throwaway ``redis-server`` on a free port, which a test may kill and start again.

    Tests that cut the broker use one of these; the shared Redis is never stopped.

    Args:
        directory: the server's working directory (its append-only file, when it keeps one).
        appendonly: keep an append-only file (``--appendonly yes``, fsync every second), so that
            what it held survives a kill and a start again in the same directory; by default it
            keeps nothing and starts empty.
    """

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        from tasklane_dev.sinks import free_port

        self.port = free_port()
        self.directory = directory
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    #: Seconds ``start`` waits for the server to answer.
    start_timeout = 10.0

    def command(self) -> list[str]:
        """The ``redis-server`` command line."""
        appendonly = "yes" if self.appendonly else "no"
        return ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", appendonly, "--dir", str(self.directory)]  # fmt: skip

    def start(self) -> Self:
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        process = self.process

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode}")
            with redis.Redis.from_url(self.url, socket_connect_timeout=1) as client:
                return bool(client.ping())

        try:
            eventually(
                answers,
                timeout=self.start_timeout,
                message="redis-server to answer",
                # A connect that takes over its second (a busy machine, a namespace's new veth)
                # raises TimeoutError, which is not a ConnectionError: not yet, either.
                ignoring=(redis.ConnectionError, redis.TimeoutError),
            )
        except BaseException:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def publish_through_kombu(connection: Connection, message: TaskMessage, queue: str) -> None:
    """``message`` sent by Kombu's ``Producer.publish`` as the publisher called it before it wrote
    Redis envelopes and batched RabbitMQ confirms: what the new paths are held against."""
    Producer(connection.default_channel).publish(
        message.body,
        exchange="",
        routing_key=queue,
        content_type=CONTENT_TYPE,
        content_encoding=CONTENT_ENCODING,
        headers=message.headers,
        delivery_mode=2,
        **message.properties,
    )


def dead_letter_email(settings: Settings, error: str, subject: str = "Hi") -> str:
    """One email task in the email DLQ, as a worker leaves it after its last retry; its id."""
    from tasklane.contracts import SEND_EMAIL
    from tasklane.wire.broker import connect
    from tasklane.wire.deadletter import dead_letter_headers, send_to_dlq
    from tasklane.wire.protocol import task_message

    task_id = str(uuid.uuid4())
    kwargs = {"to": ["ada@example.com"], "subject": subject, "text": "Hi"}
    message = task_message(SEND_EMAIL.name, task_id, kwargs, priority=SEND_EMAIL.priority)
    queue = queue_name(SEND_EMAIL, settings.namespace)
    headers = dead_letter_headers(
        {**message.headers, "retries": 8},  # a task that used up its retries
        queue=queue,
        reason="retries-exhausted",
        error_type="TransientError",
        error=error,
        attempts=9,
        worker="test@host",
    )
    with connect(settings) as connection:
        send_to_dlq(
            Producer(connection.default_channel),
            queue=queue,
            namespace=settings.namespace,
            options=QueueOptions.of(settings),
            body=message.body,
            content_type=CONTENT_TYPE,
            content_encoding=CONTENT_ENCODING,
            headers=headers,
            properties=message.properties,
        )
    return task_id
