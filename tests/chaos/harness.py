"""Fault scenarios on real notifier workers, each email counted at an independent receiver.

One run of a scenario on one broker (a :class:`Lab`):

- an SMTP sink of its own (:class:`Tally`) counts every email it accepts, by the ``X-Chaos-Id``
  header each payload carries (one per published task) and by its ``Message-ID``;
- one long-lived :class:`tasklane.Publisher` (an :class:`Upstream` thread) publishes N emails, each
  with an idempotency key and a task id of its own; when the Publisher gives up with
  :class:`tasklane.BrokerUnavailableError` the upstream counts it and publishes the same task again
  (same task id, same key), so nothing is lost upstream;
- real ``tasklane worker notifier`` processes, started as the integration tests start them;
- the fault of the scenario, recorded as events with their time;
- then the count: every task is *accounted for* when the sink has it or the ``notifier.email`` DLQ
  holds it; the lab waits for that (the drain time), then until the broker holds nothing of the
  run any more (no late redelivery can still bring a duplicate), stops its workers and checks the
  broker once more.

Results and idempotency records live in a ``redis-server`` of the lab's own, and on Redis the broker
is one too; on RabbitMQ the broker-restart and netns scenarios start a RabbitMQ node of their own
(``tests.chaos.nodes``), the others use queues of the lab's own namespace on the shared server.
Nothing here stops or cuts a shared server, and a worker's Redis sweep (visibility timeout 50 s
here) can only ever see this lab's messages. See docs/chaos.md.
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import redis
from kombu.connection import Connection

from tasklane import BrokerUnavailableError, Publisher
from tasklane.cli.main import worker_command
from tasklane.contracts import SEND_EMAIL
from tasklane.settings import Settings
from tasklane.wire.broker import redis_queue_keys
from tasklane.wire.deadletter import DeadLetterQueue
from tasklane.wire.queues import depths
from tasklane.wire.routing import QueueOptions, dlq_name, queue_name
from tasklane_dev.sinks import ReceivedMail, SmtpSink
from tests.chaos.nodes import (
    RABBITMQ_SERVER,
    NamespacedRedis,
    Namespaces,
    RabbitNode,
    netns_available,
    rabbitmq_server_available,
)
from tests.support import eventually
from tests.support.faults import TcpProxy
from tests.support.harness import (
    RABBITMQ_URL,
    BrokerEnv,
    RedisServer,
    WorkerProcess,
    cleanup,
    rabbitmq_reachable,
    stop_process_group,
)

BROKERS = ("redis", "rabbitmq")
#: The header each email carries with the id of its task in the run: the receiver's own count.
CHAOS_HEADER = "X-Chaos-Id"
#: The smallest Redis visibility timeout the notifier takes is above its longest hard time limit
#: (45 s for email): a killed worker's messages come back after it, plus one sweep (10 s).
REDIS_VISIBILITY_TIMEOUT = 50
#: Seconds nothing of a run may be held anywhere (queues, unacknowledged, workers) before the
#: tasks still missing count as lost without waiting for the whole drain timeout.
DRY_SECONDS = 5.0
#: Each fault comes at a random moment up to this many seconds after its trigger (an email
#: arrived, a task was published), so that it lands anywhere in the worker's cycle, as a real
#: crash would, not always just after a delivery or a publish.
FAULT_JITTER = 0.25
#: How long a worker told to stop may take: its soft shutdown (45 s for the notifier) and more.
STOP_GRACE = 90.0


@dataclass(frozen=True)
class Config:
    """What every scenario of one run shares."""

    n: int = 1000
    kills: int = 10
    #: Seconds each outage (broker restart, state Redis, publisher cut) lasts.
    outage: float = 10.0
    #: The Publisher's TASKLANE_PUBLISH_TIMEOUT: it raises BrokerUnavailableError after this.
    publish_timeout: float = 2.0
    concurrency: int = 2
    #: Seconds to wait for everything to be accounted for, and again for the broker to be empty.
    drain_timeout: float = 300.0
    #: Seconds a worker may take to start, a fault to be reached (deliveries, publishes).
    step_timeout: float = 120.0
    #: Seconds to wait, once all are accounted for, for the broker and workers to hold nothing:
    #: on Redis a crash's redeliveries come after the visibility timeout and one sweep.
    quiet_timeout: float = REDIS_VISIBILITY_TIMEOUT + 10 + 60.0


# --------------------------------------------------------------------------- the receiver


@dataclass(frozen=True)
class Copy:
    """One email as the receiver accepted it."""

    chaos_id: str
    message_id: str
    at: float  # time.monotonic()


class Tally(SmtpSink):
    """The independent receiver: an SMTP sink that notes each email's chaos id and Message-ID."""

    def __init__(self) -> None:
        super().__init__()
        self._copies: list[Copy] = []

    def _record(self, item: Any) -> None:
        assert isinstance(item, ReceivedMail)
        message = item.message
        copy = Copy(
            str(message.get(CHAOS_HEADER, "")), str(message.get("Message-ID", "")), time.monotonic()
        )
        with self._lock:
            self._copies.append(copy)

    @property
    def copies(self) -> list[Copy]:
        with self._lock:
            return list(self._copies)

    def ids(self) -> set[str]:
        """The chaos ids received at least once."""
        with self._lock:
            return {copy.chaos_id for copy in self._copies}

    def slow_door(self, delay: float) -> SlowDoor:
        """A second port onto this receiver that takes ``delay`` s to answer each MAIL FROM."""
        return SlowDoor(self, delay)


class SlowDoor:
    """A second SMTP port onto a :class:`Tally`, as a slow server: each ``MAIL FROM`` is answered
    only ``delay`` seconds later, before the message exists, so a delivery through it takes that
    long more. An attempt cut off while it waits never reaches DATA: the receiver records nothing
    of it. Messages that do reach DATA are recorded by the Tally, as through its own port.
    """

    def __init__(self, tally: Tally, delay: float) -> None:
        from aiosmtpd.controller import Controller

        from tasklane_dev.sinks import free_port

        self.tally = tally
        self.delay = delay
        self.port = free_port()
        self._lock = threading.Lock()
        self.waiting = 0  # sessions waiting for the MAIL FROM reply now
        self.answered = 0
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_MAIL(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        """aiosmtpd hook: wait ``delay`` seconds, then accept the sender."""
        import asyncio

        with self._lock:
            self.waiting += 1
        try:
            await asyncio.sleep(self.delay)
        finally:
            with self._lock:
                self.waiting -= 1
                self.answered += 1
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        """aiosmtpd hook: the Tally records it."""
        return str(await self.tally.handle_DATA(server, session, envelope))

    def __enter__(self) -> SlowDoor:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


# --------------------------------------------------------------------------- the upstream


@dataclass
class Task:
    """One email of the run: its own id, task id and idempotency key, kept for every publish."""

    chaos_id: str
    task_id: str
    payload: dict[str, Any]
    raises: int = 0
    published_at: float | None = None


def make_tasks(run: str, n: int) -> list[Task]:
    tasks = []
    for seq in range(n):
        chaos_id = f"{run}{seq:06d}"
        payload = {
            "to": ["chaos@example.com"],
            "subject": f"chaos {chaos_id}",
            "text": f"chaos email {seq} of run {run}",
            "headers": {CHAOS_HEADER: chaos_id},
            "idempotency_key": f"chaos-{chaos_id}",
        }
        tasks.append(Task(chaos_id, str(uuid.uuid4()), payload))
    return tasks


class Upstream(threading.Thread):
    """Publishes every task through one long-lived Publisher, ``rate`` per second or at once.

    A publish that raises BrokerUnavailableError is counted and made again with the same task id
    and payload, until it goes through: the upstream loses nothing.
    """

    def __init__(self, settings: Settings, tasks: Sequence[Task], rate: float | None) -> None:
        super().__init__(name="chaos-upstream", daemon=True)
        self.settings = settings
        self.tasks = tasks
        self.rate = rate
        self.sent = 0
        self.raises = 0
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            with Publisher(self.settings) as publisher:
                began = time.monotonic()
                for index, task in enumerate(self.tasks):
                    if self.rate:
                        pause = began + index / self.rate - time.monotonic()
                        if pause > 0 and self._halt.wait(pause):
                            return
                    if not self._publish(publisher, task):
                        return
        except BaseException as exc:  # reported with the scenario's figures
            self.error = exc
        finally:
            self.finished.set()

    def _publish(self, publisher: Publisher, task: Task) -> bool:
        while not self._halt.is_set():
            try:
                publisher.publish(SEND_EMAIL, task.payload, task_id=task.task_id)
            except BrokerUnavailableError:
                task.raises += 1
                self.raises += 1
                continue
            task.published_at = time.monotonic()
            self.sent += 1
            return True
        return False

    def stop(self) -> None:
        self._halt.set()
        self.join(self.settings.publish_timeout * 3 + 10)


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Event:
    """A fault, as the lab caused it."""

    at: float
    label: str
    crash: bool  # something was cut off: a process killed, a connection cut
    wall: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Duplicate:
    """A task whose email the receiver got more than once."""

    chaos_id: str
    copies: int
    message_ids: int
    #: Attempts that sent it and ended as the worker logs a delivery (``succeeded``, not
    #: deduplicated). Each later attempt finds that one's idempotency record, so copies beyond
    #: these came from attempts cut off after the server accepted: the crash-after-accept window.
    completed: int
    #: Seconds from the first copy to the nearest crash, if any (positive: the crash came after).
    crash_offset: float | None
    crash: str | None

    @property
    def in_window(self) -> bool:
        """Whether an attempt cut off after the server took the email explains the copies."""
        return self.completed <= 1 and self.copies > self.completed


@dataclass
class Report:
    """The figures of one scenario on one broker."""

    broker: str
    scenario: str
    n: int
    faults: int = 0
    published: int = 0
    publish_raises: int = 0
    once: int = 0
    twice: int = 0
    lost: int = 0
    dead: int = 0
    dead_delivered: int = 0
    #: Message-IDs received more than once (the receiver's own deduplication key).
    duplicate_message_ids: int = 0
    foreign: int = 0
    drain: float | None = None
    settled: float | None = None
    duplicates: list[Duplicate] = field(default_factory=list)
    lost_ids: list[str] = field(default_factory=list)
    #: Lost on Redis without any worker ever logging it received: popped from its list (BRPOP)
    #: but not yet recorded as unacknowledged when the worker or the server died.
    lost_unreceived: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    #: Seconds the whole run took, servers and workers started and stopped.
    seconds: float = 0.0
    #: Task ids a running worker received and never ran until it was stopped.
    stuck: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    #: Workers that exited on their own (and were replaced, as a supervisor would).
    exits: int = 0

    @property
    def accounted(self) -> bool:
        """Every published task was delivered or dead-lettered, and each exactly once per id."""
        return self.error is None and self.lost == 0 and self.published == self.n

    @property
    def same_message_id(self) -> bool | None:
        """Whether every duplicate had one Message-ID for all its copies; None: no duplicates."""
        if not self.duplicates:
            return None
        return all(d.message_ids == 1 for d in self.duplicates)

    @property
    def in_window(self) -> int:
        return sum(d.in_window for d in self.duplicates)


# --------------------------------------------------------------------------- the lab


class Forwarder(TcpProxy):
    """A :class:`TcpProxy` that listens on ``listen_host`` (a veth address), not on loopback."""

    def __init__(self, listen_host: str, host: str, port: int) -> None:
        super().__init__(host, port)
        self.listen_host = listen_host

    def restore(self) -> None:
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.listen_host, self.port))
        listener.listen(64)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()


def _rabbitmq_url(port: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}//"


class Lab:
    """One scenario on one broker: its servers, receiver, workers, upstream and count."""

    def __init__(
        self,
        broker: str,
        scenario: Scenario,
        config: Config,
        directory: Path,
        faulted: threading.Event | None = None,
    ) -> None:
        self.broker = broker
        self._faulted = faulted or threading.Event()
        self.scenario = scenario
        self.config = config
        self.directory = directory
        self.namespace = f"chaos{uuid.uuid4().hex[:8]}."
        self.queue = queue_name(SEND_EMAIL, self.namespace)
        self.tasks = make_tasks(self.namespace.rstrip("."), config.n)
        self.events: list[Event] = []
        self.notes: list[str] = []
        self.workers: list[WorkerProcess] = []
        self.upstream: Upstream | None = None
        self.broker_server: RedisServer | None = None
        self.proxy: TcpProxy | None = None
        #: Set by the netns scenarios: workers run in one namespace, the broker in another.
        self.netns: Namespaces | None = None
        #: The run's own RabbitMQ node, if the scenario has one.
        self.rabbit: RabbitNode | None = None
        self.smtp_host = "127.0.0.1"
        self._stack = contextlib.ExitStack()
        self._dead: tuple[int, set[str]] = (0, set())
        self.drain: float | None = None
        self.settled: float | None = None
        #: Tasks a running worker received and never ran: id and how long it held them.
        self.stuck: dict[str, float] = {}
        self._dry_since: float | None = None
        self._ended: set[int] = set()  # pids of the workers the lab stopped or killed itself

    # ---- set-up and tear-down

    def __enter__(self) -> Lab:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self.tally = self._stack.enter_context(Tally())
            self.state = self._redis("state", appendonly=self.scenario.persistent_state)
            if self.scenario.own_broker is not None:
                self.scenario.own_broker(self)
            elif self.broker == "redis":
                self.broker_server = self._redis("broker", appendonly=False)
                self.broker_url = self.broker_server.url
            else:
                self.broker_url = RABBITMQ_URL
                self._stack.callback(self._delete_queues)
            self.worker_url = self.publisher_url = self.broker_url
            self.state_url = self.state.url  # where workers reach it
            self.smtp_port = self.tally.port
            if self.scenario.prepare is not None:
                self.scenario.prepare(self)
            self._stack.callback(self._stop_everything)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    def _redis(self, name: str, appendonly: bool) -> RedisServer:
        directory = self.directory / name
        directory.mkdir(exist_ok=True)
        server = RedisServer(directory, appendonly=appendonly).start()
        self._stack.callback(server.kill)
        return server

    def rabbit_node(self, prefix: list[str] | None = None, host: str = "127.0.0.1") -> RabbitNode:
        """Start the lab's own RabbitMQ node (in a namespace with ``prefix``); removed at exit."""
        node = RabbitNode(self.directory / "rabbitmq.log", prefix, host)
        self._stack.callback(node.remove)
        began = time.monotonic()
        node.start(self.config.step_timeout)
        self.note(f"own RabbitMQ node {node.name} started in {time.monotonic() - began:.1f} s")
        self.rabbit = node
        return node

    def proxy_to_broker(self) -> TcpProxy:
        """A TCP proxy in front of the broker, which the scenario can cut and restore."""
        port = self.broker_server.port if self.broker_server is not None else 5672
        self.proxy = self._stack.enter_context(TcpProxy("127.0.0.1", port))
        return self.proxy

    def proxied_url(self) -> str:
        assert self.proxy is not None
        if self.broker_server is not None:
            return f"redis://127.0.0.1:{self.proxy.port}/0"
        return _rabbitmq_url(self.proxy.port)

    def _stop_everything(self) -> None:
        if self.upstream is not None:
            self.upstream.stop()
        for worker in self.workers:
            stop_process_group(worker.process)
            with contextlib.suppress(Exception):
                worker._log_file.close()

    def _delete_queues(self) -> None:
        with contextlib.suppress(Exception):
            cleanup(self.env)

    @property
    def env(self) -> BrokerEnv:
        """The broker as it really is (no proxy), for reading queues and DLQs."""
        return BrokerEnv(self.broker, self.broker_url, self.state.url, self.namespace)

    # ---- workers, upstream and faults

    def worker_env(self) -> dict[str, str]:
        env = {
            "TASKLANE_BROKER_URL": self.worker_url,
            "TASKLANE_RESULT_BACKEND": self.state_url,
            "TASKLANE_NAMESPACE": self.namespace,
            "TASKLANE_NOTIFIER_SMTP_HOST": self.smtp_host,
            "TASKLANE_NOTIFIER_SMTP_PORT": str(self.smtp_port),
            # The lab reads what each worker received and finished from its JSON log lines.
            "TASKLANE_LOG_FORMAT": "json",
        }
        if self.broker == "redis":
            env["TASKLANE_VISIBILITY_TIMEOUT"] = str(REDIS_VISIBILITY_TIMEOUT)
        return env

    def worker_command(self) -> list[str]:
        """What ``tasklane worker notifier -c N -- ...`` runs (it execs this ``celery worker``).

        Built by the CLI's own function, so that each start skips only the CLI's imports.
        """
        settings = Settings(
            broker_url=self.worker_url, result_backend=self.state_url, namespace=self.namespace
        )
        extra = ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        extra += ["-n", f"notifier-{uuid.uuid4().hex[:6]}@%h"]
        command = worker_command(
            "notifier", settings, concurrency=self.config.concurrency, extra=extra
        )
        return self.netns.in_worker(command) if self.netns is not None else command

    def start_workers(
        self, count: int, overrides: dict[str, str] | None = None
    ) -> list[WorkerProcess]:
        """Start ``count`` workers (with ``overrides`` to their settings) and wait until ready."""
        started = []
        for _ in range(count):
            log = self.directory / f"worker{len(self.workers)}.log"
            env = self.worker_env() | (overrides or {})
            worker = WorkerProcess.from_command(self.worker_command(), env, log)
            self.workers.append(worker)
            started.append(worker)
        for worker in started:
            worker.wait_ready(self.config.step_timeout)
        return started

    def publish(self, rate: float | None) -> Upstream:
        """Start the upstream: every task, ``rate`` per second (None: as fast as it can)."""
        settings = Settings(
            broker_url=self.publisher_url,
            result_backend=self.state.url,
            namespace=self.namespace,
            publish_timeout=self.config.publish_timeout,
        )
        self.upstream = Upstream(settings, self.tasks, rate)
        self.upstream.start()
        return self.upstream

    def paced_rate(self) -> float:
        """A publish rate that spreads the tasks over three outages' time: before, during, after."""
        return self.config.n / max(3 * self.config.outage, 1.0)

    def event(self, label: str, *, crash: bool) -> None:
        self.events.append(Event(time.monotonic(), label, crash))
        self._faulted.set()

    def fault(self, label: str, *, crash: bool) -> None:
        """Record the fault about to be caused, after a random pause of up to FAULT_JITTER."""
        time.sleep(random.uniform(0, FAULT_JITTER))
        self.event(label, crash=crash)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def wait_delivered(self, count: int) -> bool:
        """Wait until ``count`` distinct emails arrived; False if they did not in time."""

        def enough() -> bool:
            self.supervise()
            return len(self.tally.ids()) >= count

        # Polled often: the fault should land while the worker still has emails to deliver.
        return _waited(enough, self.config.step_timeout, f"{count} emails delivered", 0.02)

    def wait_sent(self, count: int) -> None:
        upstream = self.upstream
        assert upstream is not None
        eventually(
            lambda: upstream.sent >= count or upstream.finished.is_set(),
            timeout=self.config.step_timeout,
            interval=0.02,
            message=f"{count} tasks published",
        )

    def outage(
        self,
        label: str,
        down: Callable[[], object],
        up: Callable[[], object],
        words: tuple[str, str] = ("down", "back"),
    ) -> None:
        """Take something away for ``config.outage`` seconds, once a third of the tasks went out.

        The events are ``label`` followed by ``words``: its start and its end.
        """
        self.wait_sent(self.config.n // 3)
        self.fault(f"{label} {words[0]}", crash=True)
        down()
        time.sleep(self.config.outage)  # the length of the fault, not a wait for an event
        up()
        self.event(f"{label} {words[1]}", crash=False)

    # ---- counting

    def dead_task_ids(self) -> set[str]:
        """Task ids in the ``notifier.email`` DLQ, read from the broker itself (never a proxy)."""
        dlq = dlq_name(self.queue)
        with Connection(self.broker_url, connect_timeout=5) as conn:
            (depth,) = depths(conn, [dlq])
            if depth == self._dead[0]:
                return self._dead[1]
            letters = DeadLetterQueue(
                conn, dlq, self.namespace, QueueOptions.of(self.env.settings)
            ).peek(limit=depth + 100)
        ids = {letter.task_id for letter in letters if letter.task_id}
        self._dead = (depth, ids)
        return ids

    def missing(self) -> list[Task]:
        """Tasks neither received nor dead-lettered yet."""
        received = self.tally.ids()
        missing = [task for task in self.tasks if task.chaos_id not in received]
        if missing:
            dead = self.dead_task_ids()
            missing = [task for task in missing if task.task_id not in dead]
        return missing

    def accounted(self) -> bool:
        upstream = self.upstream
        return upstream is not None and upstream.finished.is_set() and not self.missing()

    def held(self) -> int:
        """Messages of the run the broker still has: queued (and on Redis unacknowledged too).

        On RabbitMQ only the ready ones: those held by a worker show once it stopped.
        """
        if self.broker_server is not None:
            with redis.Redis.from_url(self.broker_url, socket_connect_timeout=5) as client:
                queued = sum(int(client.llen(key)) for key in redis_queue_keys(self.queue))
                return queued + int(client.hlen("unacked"))
        with Connection(self.broker_url, connect_timeout=5) as conn:
            return depths(conn, [self.queue])[0]

    def settle(self) -> None:
        """Wait until all are accounted for, then until nothing can still arrive; stop workers."""
        start = self.events[0].at if self.events else time.monotonic()
        _waited(self._accounted_or_dry, self.config.drain_timeout, "every task accounted for")
        drained = self.accounted()
        if drained:
            self.drain = time.monotonic() - start
        elif self._dry_since is not None:
            self.note(
                f"{len(self.missing())} task(s) never arrived, and for {DRY_SECONDS:g} s neither "
                f"the broker nor a worker held anything more of the run"
            )
        else:
            self.note(f"not all accounted for after {self.config.drain_timeout:g} s")
        for _ in range(3):
            quiet = _waited(
                lambda: (not drained or self.accounted()) and self.quiet(),
                self.config.quiet_timeout,
                "the broker and the workers to hold nothing of the run",
            )
            if not quiet:
                stuck = self.unfinished()
                if stuck:
                    oldest = max(stuck.values())
                    self.stuck.update(stuck)
                    self.note(
                        f"{len(stuck)} task(s) received by a running worker and never run "
                        f"(the oldest for {oldest:.0f} s): {', '.join(sorted(stuck))}"
                    )
                held = self.held()
                if held:
                    self.note(f"the broker still held {held} messages")
            self.stop_workers()
            left = self.held()
            if left == 0:
                self.settled = time.monotonic() - start if quiet else None
                return
            # Held by a worker (a retry waiting for its countdown, a stuck one) and handed back
            # as it stopped: one more worker runs them.
            self.note(f"{left} message(s) handed back by the stopping workers; one more worker")
            self.start_workers(1)
        self.settled = None

    def _accounted_or_dry(self) -> bool:
        """All accounted for; or some never will be: nothing left anywhere that could bring them."""
        self.supervise()
        if self.accounted():
            return True
        upstream = self.upstream
        if upstream is None or not upstream.finished.is_set() or not self.quiet():
            self._dry_since = None
            return False
        if self._dry_since is None:
            self._dry_since = time.monotonic()
        return time.monotonic() - self._dry_since >= DRY_SECONDS

    def running(self) -> list[WorkerProcess]:
        return [worker for worker in self.workers if worker.process.poll() is None]

    def unfinished(self) -> dict[str, float]:
        """Tasks a running worker logged received and then nothing more: id and seconds since."""
        now = time.time()
        found: dict[str, float] = {}
        for worker in self.running():
            last: dict[str, tuple[str, str]] = {}
            for stamp, task_id, word in _TASK_LINE.findall(worker.output()):
                last[task_id] = (stamp, word)
            for task_id, (stamp, word) in last.items():
                if word == "received":
                    found[task_id] = now - _log_time(stamp)
        return found

    def quiet(self) -> bool:
        """Nothing waiting in the broker, no running worker holding a task."""
        self.supervise()
        return self.held() == 0 and not self.unfinished()

    def stop_workers(self) -> None:
        for worker in self.workers:
            self.stopping(worker)
            stop_process_group(worker.process)

    def stopping(self, worker: WorkerProcess) -> WorkerProcess:
        """Note that the lab itself ends ``worker``: its exit is not one to restart it after."""
        self._ended.add(worker.process.pid)
        return worker

    def supervise(self) -> None:
        """Start a new worker for one that exited on its own, as Kubernetes restarts a container.

        Counted as a crash (what it was doing was cut off) and noted with the worker's last error.
        """
        for worker in list(self.workers):
            code = worker.process.poll()
            if code is None or worker.process.pid in self._ended:
                continue
            self._ended.add(worker.process.pid)
            self.event(f"{EXITED} ({code})", crash=True)
            errors = [line for line in worker.output().splitlines() if "Unrecoverable" in line]
            why = f": {_message(errors[-1])}" if errors else ""
            self.note(f"a worker exited on its own with status {code}{why}; a new one was started")
            self.start_workers(1)

    def report(self) -> Report:
        copies = self.tally.copies
        per_id: dict[str, list[Copy]] = {}
        for copy in copies:
            per_id.setdefault(copy.chaos_id, []).append(copy)
        ours = {task.chaos_id for task in self.tasks}
        dead = self._safe_dead_ids()
        report = Report(self.broker, self.scenario.name, self.config.n)
        report.faults = sum(
            (event.crash or "SIGTERM" in event.label) and not event.label.startswith(EXITED)
            for event in self.events
        )
        report.exits = sum(event.label.startswith(EXITED) for event in self.events)
        upstream = self.upstream
        report.published = sum(task.published_at is not None for task in self.tasks)
        report.publish_raises = upstream.raises if upstream is not None else 0
        report.foreign = sum(len(c) for chaos_id, c in per_id.items() if chaos_id not in ours)
        crashes = [event for event in self.events if event.crash]
        completed = Counter(
            task_id for worker in self.workers for task_id in _DELIVERED.findall(worker.output())
        )
        for task in self.tasks:
            received = per_id.get(task.chaos_id, [])
            if task.task_id in dead:
                report.dead += 1
                report.dead_delivered += bool(received)
            if len(received) == 1:
                report.once += 1
            elif len(received) > 1:
                report.twice += 1
                report.duplicates.append(
                    _duplicate(task.chaos_id, received, completed[task.task_id], crashes)
                )
            elif task.task_id not in dead and task.published_at is not None:
                report.lost += 1
                report.lost_ids.append(task.chaos_id)
        if report.lost_ids and self.broker == "redis":
            logs = "".join(worker.output() for worker in self.workers)
            report.lost_unreceived = [
                task.chaos_id
                for task in self.tasks
                if task.chaos_id in report.lost_ids and f"[{task.task_id}] received" not in logs
            ]
        by_message_id = Counter(copy.message_id for copy in copies if copy.chaos_id in ours)
        report.duplicate_message_ids = sum(count > 1 for count in by_message_id.values())
        report.drain = self.drain
        report.settled = self.settled
        report.stuck = sorted(self.stuck)
        report.events = list(self.events)
        report.notes = list(self.notes)
        if upstream is not None and upstream.error is not None:
            report.error = f"upstream: {type(upstream.error).__name__}: {upstream.error}"
        return report

    def _safe_dead_ids(self) -> set[str]:
        try:
            return self.dead_task_ids()
        except Exception as exc:
            self.note(f"DLQ not readable: {type(exc).__name__}: {exc}")
            return set()


def _duplicate(
    chaos_id: str, copies: list[Copy], completed: int, crashes: list[Event]
) -> Duplicate:
    first = copies[0].at
    nearest = min(crashes, key=lambda event: abs(event.at - first), default=None)
    return Duplicate(
        chaos_id,
        len(copies),
        len({copy.message_id for copy in copies}),
        completed,
        None if nearest is None else nearest.at - first,
        None if nearest is None else nearest.label,
    )


#: The label of the event a worker's own exit is recorded as.
EXITED = "worker exited"


def _message(line: str) -> str:
    """The message of a JSON log line (its first 200 characters), or the line itself."""
    found = re.search(r'"message": "((?:[^"\\]|\\.){0,200})', line)
    return found.group(1) if found else line[:200]


#: A Celery worker's log line about one task: its time, the task id and the first word after it.
_TASK_LINE = re.compile(
    r'"time": "([0-9: ,-]+)".*?"message": "Task notifier\.email\.send\[([0-9a-f-]{36})\] (\w+)'
)


#: A worker's log line of a task that delivered its email (not answered from the idempotency
#: record): the task id.
_DELIVERED = re.compile(
    r'"message": "Task notifier\.email\.send\[([0-9a-f-]{36})\] succeeded in [^"]*'
    r"'deduplicated': False"
)


def _log_time(stamp: str) -> float:
    """A JSON log line's local time (``2026-12-03 16:47:12,844``) as a Unix time."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _waited(check: Callable[[], object], timeout: float, what: str, interval: float = 0.5) -> bool:
    """Whether ``check`` came true within ``timeout`` (tests.support.eventually, not failing)."""
    try:
        eventually(
            check,
            timeout=timeout,
            interval=interval,
            message=what,
            ignoring=(OSError, redis.ConnectionError),
        )
    except pytest.fail.Exception:
        return False
    return True


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    """A fault and how it is described in the output."""

    name: str
    run: Callable[[Lab], None]
    describe: Callable[[str, Config], str]
    #: The state Redis keeps an append-only file, so that a restart keeps what it held.
    persistent_state: bool = False
    prepare: Callable[[Lab], None] | None = None
    #: Starts the broker of the run's own instead of the default (Redis: an own redis-server on
    #: the host; RabbitMQ: a namespace of the lab's own on the shared server); sets broker_url.
    own_broker: Callable[[Lab], None] | None = None


def _kill9(lab: Lab) -> None:
    lab.start_workers(1)
    lab.publish(rate=None)  # a backlog: the worker is always delivering when it is killed
    kills = lab.config.kills
    for index in range(kills):
        target = (index + 1) * lab.config.n // (kills + 2)
        if not lab.wait_delivered(target):
            lab.note(f"{index} of {kills} kills: deliveries did not reach {target}")
            return
        worker = lab.workers[-1]
        lab.fault(f"kill -9 #{index + 1}", crash=True)
        lab.stopping(worker).kill()  # SIGKILL to the process group: main and pool children
        lab.start_workers(1)


#: The stopping worker's TASKLANE_SOFT_SHUTDOWN_TIMEOUT in the ``-long`` SIGTERM scenarios.
LONG_GRACE = 2.0
#: How long the slow SMTP door takes to answer MAIL FROM there: every delivery of the stopping
#: worker takes longer than its grace (and less than the notifier's SMTP timeout, 10 s).
LONG_TASK = 6.0


def _sigterm(group: bool, long: bool = False) -> Callable[[Lab], None]:
    def run(lab: Lab) -> None:
        door: SlowDoor | None = None
        if long:
            door = lab._stack.enter_context(lab.tally.slow_door(LONG_TASK))
            overrides = {
                "TASKLANE_SOFT_SHUTDOWN_TIMEOUT": f"{LONG_GRACE:g}",
                "TASKLANE_NOTIFIER_SMTP_PORT": str(door.port),
            }
            if lab.netns is not None:  # not combined with a namespace
                raise RuntimeError("the slow SMTP door listens on 127.0.0.1 only")
            (stopping,) = lab.start_workers(1, overrides)
            lab.stopping(stopping)
            lab.publish(rate=None)
            # The stopping worker alone until each of its pool processes is in a slow delivery:
            # a worker started beside it could take every task before it took one.
            slow = door
            if not _waited(
                lambda: slow.waiting >= lab.config.concurrency,
                lab.config.step_timeout,
                "the stopping worker's first deliveries to reach the slow SMTP",
                0.02,
            ):
                raise RuntimeError(f"{slow.waiting} delivery(ies) reached the slow SMTP")
            lab.start_workers(1)
        else:
            stopping, _ = lab.start_workers(2)
            lab.stopping(stopping)
            lab.publish(rate=None)
        lab.wait_delivered(lab.config.n // 3)
        if door is not None:
            # Every pool process of the stopping worker is in a delivery that outlasts its grace.
            slow = door
            _waited(
                lambda: slow.waiting >= lab.config.concurrency,
                lab.config.step_timeout,
                "the stopping worker's deliveries to wait for the slow SMTP",
                0.02,
            )
            lab.note(
                f"at the SIGTERM {slow.waiting} delivery(ies) of the stopping worker were waiting "
                f"for the slow SMTP ({LONG_TASK:g} s; its shutdown timeout {LONG_GRACE:g} s)"
            )
        children = _children(stopping.process.pid)
        began = time.monotonic()
        if group:
            # The pool children get it too and quit at once: their tasks are cut off.
            lab.fault("SIGTERM to the process group", crash=True)
            os.killpg(stopping.process.pid, signal.SIGTERM)
        else:
            lab.fault("SIGTERM to the main process", crash=False)
            os.kill(stopping.process.pid, signal.SIGTERM)
        if children:
            # When the pool processes were gone: with the signal, or when the cold shutdown ended
            # them.
            gone = _waited(
                lambda: not any(_alive(pid) for pid in children), STOP_GRACE, "pool gone", 0.05
            )
            lab.note(
                f"the stopped worker's {len(children)} pool processes were gone "
                f"{time.monotonic() - began:.1f} s after the signal"
                if gone
                else f"the stopped worker's pool processes still ran after {STOP_GRACE:g} s"
            )
        try:
            code = stopping.process.wait(STOP_GRACE)
            took = time.monotonic() - began
            lab.note(f"the stopped worker exited with {code} after {took:.1f} s")
        except subprocess.TimeoutExpired:
            lab.event("SIGKILL after the grace period", crash=True)
            os.killpg(stopping.process.pid, signal.SIGKILL)
            stopping.process.wait(10)
            lab.note(f"the stopped worker was still running after {STOP_GRACE:g} s: SIGKILL")
        if door is not None:
            logs = stopping.output()
            passed = [line for line in logs.splitlines() if "soft shutdown timeout" in line]
            if passed:
                lab.note(f"the stopped worker logged: {_message(passed[-1])}")
            restored = re.findall(r"Restoring (\d+) unacknowledged message", logs)
            if restored:
                lab.note(f"the stopped worker handed back {', '.join(restored)} message(s)")

    return run


def _restartable_broker(lab: Lab) -> None:
    """Redis: an own redis-server keeping an append-only file; RabbitMQ: an own node."""
    if lab.broker == "redis":
        lab.broker_server = lab._redis("broker", appendonly=True)
        lab.broker_url = lab.broker_server.url
    elif rabbitmq_server_available():
        lab.broker_url = lab.rabbit_node().url
    else:  # the TCP-level cut of the shared server
        lab.broker_url = RABBITMQ_URL
        lab._stack.callback(lab._delete_queues)
        lab.proxy_to_broker()


def _broker_restart(lab: Lab) -> None:
    if lab.proxy is not None:
        lab.worker_url = lab.publisher_url = lab.proxied_url()
    lab.start_workers(1)
    lab.publish(rate=lab.paced_rate())
    if lab.broker_server is not None:
        server = lab.broker_server
        lab.outage("redis-server", server.kill, server.start)
    elif lab.rabbit is not None:
        node = lab.rabbit

        def start() -> None:
            began = time.monotonic()
            node.start(lab.config.step_timeout)
            lab.note(f"the node answered again {time.monotonic() - began:.1f} s after its start")

        lab.outage("RabbitMQ node", node.kill, start)
    else:
        proxy = lab.proxy
        assert proxy is not None
        lab.outage("TCP to RabbitMQ", proxy.cut, proxy.restore)


def _state_outage(lab: Lab) -> None:
    lab.start_workers(1)
    lab.publish(rate=lab.paced_rate())
    lab.outage("state redis-server", lab.state.kill, lab.state.start)


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (a prefork worker's pool), from /proc."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, exited and not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _proxy_publisher(lab: Lab) -> None:
    lab.proxy_to_broker()
    lab.publisher_url = lab.proxied_url()


def _publisher_cut(lab: Lab) -> None:
    lab.start_workers(1)
    lab.publish(rate=lab.paced_rate())
    proxy = lab.proxy
    assert proxy is not None
    lab.outage("TCP from the Publisher", proxy.cut, proxy.restore)


def _broker_in_netns(lab: Lab) -> None:
    """The broker in a namespace of its own, the worker in another, one veth pair between them.

    The Publisher and the lab's reads reach the broker on a second pair from the host; the
    worker reaches the state Redis and the SMTP sink on a third, through forwarders on the host.
    """
    netns = Namespaces().create()
    lab._stack.callback(netns.delete)
    lab.netns = netns
    prefix = netns.in_broker_prefix()
    if lab.broker == "redis":
        directory = lab.directory / "broker"
        directory.mkdir(exist_ok=True)
        server = NamespacedRedis(directory, prefix, netns.broker_public, appendonly=False)
        lab._stack.callback(server.kill)
        lab.broker_server = server.start()
        lab.broker_url = server.url
    elif rabbitmq_server_available():
        lab.broker_url = lab.rabbit_node(prefix, netns.broker_public).url
    else:
        raise RuntimeError(
            f"{RABBITMQ_SERVER} is not installed: no RabbitMQ node to put in a netns"
        )


def _worker_in_netns(lab: Lab) -> None:
    """The worker's URLs: the broker across the link, state Redis and SMTP via forwarders."""
    netns = lab.netns
    assert netns is not None
    if isinstance(lab.broker_server, NamespacedRedis):
        lab.worker_url = lab.broker_server.url_at(netns.broker_addr)
    else:
        assert lab.rabbit is not None
        lab.worker_url = lab.rabbit.url_at(netns.broker_addr)

    def forward(port: int) -> int:
        forwarder = lab._stack.enter_context(Forwarder(netns.host_for_worker, "127.0.0.1", port))
        return forwarder.port

    lab.state_url = f"redis://{netns.host_for_worker}:{forward(lab.state.port)}/0"
    lab.smtp_host = netns.host_for_worker
    lab.smtp_port = forward(lab.tally.port)


def _netns_cut(silent: bool) -> Callable[[Lab], None]:
    def run(lab: Lab) -> None:
        lab.start_workers(1)
        lab.publish(rate=lab.paced_rate())
        netns = lab.netns
        assert netns is not None
        if silent:
            words = ("silent", "resolved again")
            lab.outage("worker–broker veth", netns.silence, netns.unsilence, words)
        else:
            words = ("set down", "set up")
            lab.outage("worker–broker veth", netns.link_down, netns.link_up, words)

    return run


def _describe_kill9(broker: str, config: Config) -> str:
    redelivery = (
        f"the new worker's sweep returns the killed worker's messages after the visibility "
        f"timeout ({REDIS_VISIBILITY_TIMEOUT} s) plus up to 10 s"
        if broker == "redis"
        else "RabbitMQ requeues the killed worker's messages as its connection closes"
    )
    return (
        f"kill -9 (SIGKILL) of the worker's whole process group {config.kills} times while it "
        f"delivers a backlog, the k-th kill once k/{config.kills + 2} of the emails arrived; a new "
        f"worker each time; {redelivery}"
    )


def _describe_sigterm(group: bool, long: bool = False) -> Callable[[str, Config], str]:
    if group:
        target = (
            "its whole process group (main and pool children; a pool child's SIGTERM handler, "
            "billiard's, ends its running task with SystemExit, so this counts as a crash)"
        )
    else:
        target = "its main process (the worker's warm shutdown)"
    if long:
        tasks = (
            f"; the stopping worker runs with TASKLANE_SOFT_SHUTDOWN_TIMEOUT={LONG_GRACE:g} and "
            f"sends through a second port of the SMTP sink that answers MAIL FROM only "
            f"{LONG_TASK:g} s later (before the message exists, so an attempt cut off there "
            f"leaves nothing at the sink), so each of its deliveries outlasts its grace; it "
            f"takes the backlog alone until both its pool processes wait there, then the other "
            f"worker starts; the signal comes once both still wait there; the lab notes when "
            f"the pool "
            f"processes were gone and what the worker logged about the hand-back"
        )
    else:
        tasks = ""
    return lambda broker, config: (
        f"two workers deliver a backlog; at a third of the emails one of them gets SIGTERM to "
        f"{target}, as at a scale-in, and is not replaced{tasks}"
    )


def _describe_restart(broker: str, config: Config) -> str:
    if broker == "redis":
        return (
            f"the broker is an own redis-server started with --appendonly yes in its own directory "
            f"(so queued and unacknowledged messages survive), killed with SIGKILL at a third "
            f"published and started again on the same port {config.outage:g} s later"
        )
    if rabbitmq_server_available():
        return (
            f"the broker is an own RabbitMQ node (own RABBITMQ_NODENAME chaos-<tag>@localhost, "
            f"free AMQP, distribution and epmd ports, its own epmd, data directory, config and "
            f"cookie, no plugins), killed with SIGKILL to its process group (beam.smp) at a third "
            f"published and started again on the same ports and data directory {config.outage:g} "
            f"s later (so durable queues and the persistent messages it confirmed survive); the "
            f"shared RabbitMQ is not touched"
        )
    return (
        f"TCP-level cut (rabbitmq-server is not installed here): a TCP proxy between the workers "
        f"and Publisher and the shared RabbitMQ closes every connection and refuses new ones for "
        f"{config.outage:g} s"
    )


def _describe_state(broker: str, config: Config) -> str:
    return (
        f"the result backend and idempotency store is an own redis-server (--appendonly yes), "
        f"killed with SIGKILL at a third published and started again {config.outage:g} s later; "
        f"the broker stays up"
    )


def _describe_netns(silent: bool) -> Callable[[str, Config], str]:
    if silent:
        cut = (
            "both ends of that pair send their frames to a link-layer address nobody has (a "
            "permanent neighbour entry), a silent partition: packets dropped, no reset, no ICMP, "
            "links up; then they resolve each other again"
        )
    else:
        cut = (
            "`ip link set down` on both ends of that pair (the worker's end first, then the "
            "broker's), then `ip link set up` on both (the kernel puts the routes back)"
        )

    def describe(broker: str, config: Config) -> str:
        server = (
            "an own redis-server (no append-only file)"
            if broker == "redis"
            else "an own RabbitMQ node (as in broker-restart)"
        )
        return (
            f"the broker, {server}, runs in a network namespace of its own (`ip netns exec`), the "
            f"worker in another; one veth pair joins them, with its addresses only inside the "
            f"two namespaces, and carries the worker's broker connection alone; the Publisher and "
            f"the lab's reads reach the broker on a second pair from the host, the worker its "
            f"result backend, idempotency store and SMTP on a third, through forwarders; at a "
            f"third published, for {config.outage:g} s, {cut}"
        )

    return describe


def _describe_publisher_cut(broker: str, config: Config) -> str:
    return (
        f"a TCP proxy between the Publisher alone and the broker is cut for {config.outage:g} s "
        f"at a third published; the workers keep their own connections"
    )


SCENARIOS: dict[str, Scenario] = {
    scenario.name: scenario
    for scenario in (
        Scenario("kill9", _kill9, _describe_kill9),
        Scenario("sigterm-main", _sigterm(group=False), _describe_sigterm(group=False)),
        Scenario("sigterm-group", _sigterm(group=True), _describe_sigterm(group=True)),
        Scenario(
            "sigterm-main-long",
            _sigterm(group=False, long=True),
            _describe_sigterm(group=False, long=True),
        ),
        Scenario(
            "sigterm-group-long",
            _sigterm(group=True, long=True),
            _describe_sigterm(group=True, long=True),
        ),
        Scenario(
            "broker-restart",
            _broker_restart,
            _describe_restart,
            own_broker=_restartable_broker,
        ),
        Scenario("state-outage", _state_outage, _describe_state, persistent_state=True),
        Scenario(
            "publisher-cut", _publisher_cut, _describe_publisher_cut, prepare=_proxy_publisher
        ),
        Scenario(
            "netns-cut",
            _netns_cut(silent=False),
            _describe_netns(silent=False),
            prepare=_worker_in_netns,
            own_broker=_broker_in_netns,
        ),
        Scenario(
            "netns-silent",
            _netns_cut(silent=True),
            _describe_netns(silent=True),
            prepare=_worker_in_netns,
            own_broker=_broker_in_netns,
        ),
    )
}

#: Scenarios that need ``ip netns`` (root).
NETNS_SCENARIOS = frozenset({"netns-cut", "netns-silent"})


def scrub_environment(environ: dict[str, str] | None = None) -> list[str]:
    """Remove TASKLANE_* settings (and REDIS_URL) a shell may hold: workers inherit the
    environment, and the lab gives them every setting it means them to have. What CI requires of
    the machine (TASKLANE_REQUIRE_*) stays. Returns the names removed."""
    env = os.environ if environ is None else environ
    names = [
        name
        for name in env
        if (name.startswith("TASKLANE_") and not name.startswith("TASKLANE_REQUIRE_"))
        or name == "REDIS_URL"
    ]
    for name in names:
        del env[name]
    return names


def available_scenarios() -> list[str]:
    """Every scenario this machine can run: the netns ones need ``ip netns`` (root)."""
    netns = netns_available()
    return [name for name in SCENARIOS if name not in NETNS_SCENARIOS or netns]


#: Scenarios that wait for the visibility timeout on Redis.
SLOW_ON_REDIS = frozenset({"kill9", "broker-restart"})


def run_scenario(
    broker: str,
    name: str,
    config: Config,
    directory: Path,
    *,
    faulted: threading.Event | None = None,
) -> Report:
    """Run one scenario on one broker and count; errors end up in the report, never raised.

    Args:
        faulted: set once the scenario's first fault happened.
    """
    began = time.monotonic()
    report = _run_scenario(broker, name, config, directory, faulted)
    report.seconds = time.monotonic() - began
    return report


def _run_scenario(
    broker: str, name: str, config: Config, directory: Path, faulted: threading.Event | None
) -> Report:
    scenario = SCENARIOS[name]
    failures = (Exception, pytest.fail.Exception)
    try:
        with Lab(broker, scenario, config, directory / f"{broker}-{name}", faulted) as lab:
            error: str | None = None
            try:
                scenario.run(lab)
                lab.settle()
            except failures as exc:
                error = f"{type(exc).__name__}: {exc}"
            report = lab.report()
            report.error = report.error or error
            return report
    except failures as exc:
        report = Report(broker, name, config.n)
        report.error = f"{type(exc).__name__}: {exc}"
        return report


def run_all(
    config: Config,
    brokers: Iterable[str],
    scenarios: Iterable[str],
    directory: Path,
    *,
    jobs: int = 1,
    progress: Callable[[Report], None] | None = None,
) -> list[Report]:
    """Every scenario on every broker (RabbitMQ skipped when it does not answer), ``jobs`` at once.

    Reports come back in the order of ``scenarios`` then ``brokers``.
    """
    wanted = [(name, broker) for name in scenarios for broker in brokers]
    unknown = sorted({name for name, _ in wanted} - SCENARIOS.keys())
    if unknown:
        raise ValueError(f"unknown scenarios: {', '.join(unknown)}")
    if any(broker == "rabbitmq" for _, broker in wanted) and not rabbitmq_reachable():
        raise RuntimeError(f"RabbitMQ does not answer at {RABBITMQ_URL}")

    def one(item: tuple[str, str], faulted: threading.Event | None = None) -> Report:
        name, broker = item
        report = run_scenario(broker, name, config, directory, faulted=faulted)
        if progress is not None:
            progress(report)
        return report

    if jobs <= 1:
        return [one(item) for item in wanted]
    # On Redis a killed worker's or a restarted server's messages wait for the visibility timeout:
    # those runs start first, alone, and the others once they are past their first fault, when
    # they only wait; so the others' worker starts do not delay their faults.
    slow = [item for item in wanted if item[1] == "redis" and item[0] in SLOW_ON_REDIS]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        faulted = {item: threading.Event() for item in slow}
        futures = {item: pool.submit(one, item, faulted[item]) for item in slow}
        deadline = time.monotonic() + 2 * config.step_timeout
        for item in slow:
            while not (faulted[item].wait(0.2) or futures[item].done()):
                if time.monotonic() > deadline:
                    break
        for item in wanted:
            if item not in futures:
                futures[item] = pool.submit(one, item)
        return [futures[item].result() for item in wanted]


# --------------------------------------------------------------------------- output


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f}"


def _same(report: Report) -> str:
    same = report.same_message_id
    if same is None:
        return "–"
    differing = sum(d.message_ids > 1 for d in report.duplicates)
    return "yes" if same else f"no ({differing} differ)"


TABLE_HEADER = (
    "| broker | scenario | faults | published | publish raises | delivered once "
    "| delivered ≥ 2 | lost | dead-lettered | drain s | settled s | duplicates: same Message-ID "
    "| duplicates in crash-after-accept window |\n"
    "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|"
)


def table_row(report: Report) -> str:
    dead = str(report.dead)
    if report.dead_delivered:
        dead += f" ({report.dead_delivered} also delivered)"
    lost = str(report.lost)
    if report.lost_unreceived:
        lost += f" ({len(report.lost_unreceived)} popped, never received)"
    twice = str(report.twice)
    if report.duplicate_message_ids != report.twice:
        twice += f" (by Message-ID: {report.duplicate_message_ids})"
    window = f"{report.in_window} of {report.twice}" if report.twice else "–"
    faults = str(report.faults)
    if report.exits:
        faults += f" (+{report.exits} worker exit{'s' if report.exits > 1 else ''})"
    return (
        f"| {report.broker} | {report.scenario}{' (error)' if report.error else ''} "
        f"| {faults} | {report.published} of {report.n} | {report.publish_raises} "
        f"| {report.once} | {twice} | {lost} | {dead} | {_seconds(report.drain)} "
        f"| {_seconds(report.settled)} | {_same(report)} | {window} |"
    )


def markdown(
    reports: Sequence[Report], config: Config, command: str, when: datetime | None = None
) -> str:
    """The table, the command, the date, what each scenario does and the notes of each run."""
    when = when or datetime.now(UTC)
    lines = [
        "## Fault suite results",
        "",
        f"- Command: `{command}`",
        f"- Date: {when:%Y-%m-%d %H:%M} UTC",
        f"- Host: {os.cpu_count()} CPUs, Python {platform.python_version()}, {_server_versions()}",
        f"- Each run: {config.n} emails published through one long-lived `tasklane.Publisher` "
        f"(TASKLANE_PUBLISH_TIMEOUT={config.publish_timeout:g} s; on BrokerUnavailableError the "
        f"same task id and idempotency key are published again) to real `tasklane worker "
        f"notifier` processes (prefork, concurrency {config.concurrency}), each email counted at "
        f"an SMTP sink of the run's own by its `{CHAOS_HEADER}` header and by its `Message-ID`; "
        f"dead letters read from the `notifier.email` DLQ. Redis workers run with "
        f"TASKLANE_VISIBILITY_TIMEOUT={REDIS_VISIBILITY_TIMEOUT}. Each fault comes at a random "
        f"moment up to {FAULT_JITTER:g} s after its trigger (an email arrived, a task was "
        f"published), so that it lands anywhere in the worker's cycle.",
        "- *lost*: published, never received and not dead-lettered. *drain*: seconds from the "
        "first fault until every task was received or dead-lettered (publishing goes on through "
        "and after the outages). *settled*: until the broker held nothing of the run any more, "
        "so no late redelivery could still bring a duplicate. *crash-after-accept window*: "
        "duplicates with more copies than attempts that ended normally (the workers' logs show "
        "at most one delivery, the other copies were sent by attempts cut off after the SMTP "
        "server accepted, before the idempotency record).",
        "",
        TABLE_HEADER,
        *(table_row(report) for report in reports),
        "",
        "### Scenarios",
        "",
    ]
    described: set[tuple[str, str]] = set()
    for report in reports:
        scenario = SCENARIOS.get(report.scenario)
        if scenario is None or (report.broker, report.scenario) in described:
            continue
        described.add((report.broker, report.scenario))
        lines.append(
            f"- **{report.scenario}, {report.broker}**: {scenario.describe(report.broker, config)}."
        )
    details = [line for report in reports for line in _details(report)]
    if details:
        lines += ["", "### Notes", "", *details]
    return "\n".join(lines) + "\n"


def _details(report: Report) -> list[str]:
    lines = []
    prefix = f"- {report.scenario}, {report.broker}:"
    if report.error:
        lines.append(f"{prefix} error: {report.error}")
    if report.events:
        faults = ", ".join(
            f"{event.label} {datetime.fromtimestamp(event.wall, UTC):%H:%M:%S.%f}"[:-3]
            for event in report.events[:12]
        )
        lines.append(f"{prefix} faults (UTC): {faults}")
    lines += [f"{prefix} {note}" for note in report.notes]
    if report.lost_ids:
        shown = ", ".join(report.lost_ids[:10])
        lines.append(f"{prefix} lost: {shown}{' …' if len(report.lost_ids) > 10 else ''}")
    if report.lost_unreceived:
        lines.append(
            f"{prefix} {len(report.lost_unreceived)} of the lost were taken from their Redis list "
            f"(BRPOP) but never logged received by a worker: Kombu records a popped message as "
            f"unacknowledged with a second command, which the crash cut off"
        )
    for duplicate in report.duplicates[:20]:
        if duplicate.crash_offset is None:
            when = "no crash"
        else:
            ms = duplicate.crash_offset * 1000
            side = "before" if ms >= 0 else "after"
            when = f"its first copy arrived {abs(ms):.0f} ms {side} {duplicate.crash}"
        when += f"; {duplicate.completed} attempt(s) logged as delivered"
        lines.append(
            f"{prefix} {duplicate.chaos_id} received {duplicate.copies}×, "
            f"{duplicate.message_ids} Message-ID(s), {when}"
        )
    if len(report.duplicates) > 20:
        lines.append(f"{prefix} … {len(report.duplicates) - 20} more duplicates")
    if report.foreign:
        lines.append(f"{prefix} {report.foreign} emails that no task of the run sent")
    return lines


def _server_versions() -> str:
    versions = []
    try:
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=False
        ).stdout
        versions.append("redis-server " + out.split("v=")[1].split()[0])
    except (OSError, IndexError):
        pass
    try:
        with Connection(RABBITMQ_URL, connect_timeout=2) as conn:
            conn.connect()
            properties = conn.connection.server_properties
            versions.append(f"RabbitMQ {properties.get('version', '?')}")
    except Exception:
        pass
    return ", ".join(versions)
