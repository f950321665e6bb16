"""Safe scale-in on real processes: SIGTERM, then SIGKILL after the grace, as Kubernetes does.

Two workers of a test-only service (``scalein_service``) share one queue. Every task appends
``label@worker`` to a ``started`` list when it begins and to a ``done`` list when it ends, so a
task that was lost (no ``done``) or completed twice (two ``done``) shows. A task handed back and
run again from the start shows as two ``started``: that is at-least-once working as designed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.connection import Connection

from tasklane.publish import Publisher
from tasklane.wire.broker import redis_queue_keys
from tasklane.wire.queues import depths
from tasklane.wire.routing import dlq_name, queue_name
from tasklane.worker.app import longest_hold, visibility_timeout
from tasklane.worker.app import soft_shutdown_timeout as derived_soft_shutdown_timeout
from tests.support import eventually
from tests.support.harness import BrokerEnv, WorkerProcess, cleanup
from tests.support.scalein_contracts import LONG, SCALEIN_REGISTRY

# The broker's Redis database: no other test uses it, so nothing here can disturb their messages
# (a sweep with a short visibility timeout would hand theirs to these workers).
REDIS_BROKER_DB = 13
CONCURRENCY = 2
# Seconds between the Redis sweeps of the worker that takes over, in the SIGKILL test.
RESTORE_INTERVAL = 1
# Added to every wait for the workers: the machine is shared, so it is generous.
MARGIN = 10.0
# The grace of the worker stopped once every task is done: its soft shutdown timeout (10 s in
# every test) and the margin. Its warm shutdown usually ends within 2 s.
IDLE_GRACE = 10.0 + MARGIN


@pytest.fixture
def broker(broker: BrokerEnv) -> Iterator[BrokerEnv]:
    """conftest's ``broker``, with the Redis broker's messages in a database of their own."""
    if broker.kind == "redis":
        url = f"{broker.broker_url.rsplit('/', 1)[0]}/{REDIS_BROKER_DB}"
        broker = replace(broker, broker_url=url)
    yield broker
    cleanup(broker, SCALEIN_REGISTRY)


@dataclass(frozen=True)
class Ledger:
    """The ``started`` and ``done`` lists the service's tasks append ``label@worker`` to."""

    broker: BrokerEnv

    def _read(self, event: str) -> list[tuple[str, str]]:
        client = redis.Redis.from_url(self.broker.result_backend, decode_responses=True)
        pairs = []
        for entry in client.lrange(f"{self.broker.namespace}scalein:{event}", 0, -1):
            label, _, worker = str(entry).partition("@")
            pairs.append((label, worker))
        return pairs

    def started(self, worker: str | None = None) -> list[str]:
        return [label for label, w in self._read("started") if worker in (None, w)]

    def done(self, worker: str | None = None) -> list[str]:
        return [label for label, w in self._read("done") if worker in (None, w)]

    def wait(self, condition: str, predicate: Callable[[], bool], timeout: float) -> None:
        eventually(
            predicate,
            timeout=timeout,
            message=lambda: f"{condition}: started={self.started()} done={self.done()}",
        )


def start_workers(
    broker: BrokerEnv,
    tmp_path: Path,
    soft_shutdown_timeout: float,
    extra_env: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, WorkerProcess]:
    """Workers ``a`` and ``b``, started together, both ready; ``extra_env`` by worker name."""
    workers: dict[str, WorkerProcess] = {}
    for name in ("a", "b"):
        command = [
            sys.executable, "-m", "celery", "-A", "tests.support.scalein_service", "worker",
            "--concurrency", str(CONCURRENCY), "--loglevel", "INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h",
        ]  # fmt: skip
        env = {
            **broker.env(),
            "SCALEIN_WORKER": name,
            "TASKLANE_SOFT_SHUTDOWN_TIMEOUT": str(soft_shutdown_timeout),
            **(extra_env or {}).get(name, {}),
        }
        workers[name] = WorkerProcess.from_command(command, env, tmp_path / f"{name}.log")
    for worker in workers.values():
        worker.wait_ready()
    return workers


@dataclass(frozen=True)
class Stopped:
    exit_code: int
    seconds: float
    sigkilled: bool


def stop_like_kubernetes(worker: WorkerProcess, grace: float) -> Stopped:
    """SIGTERM to the main process (the container's PID 1), SIGKILL to all after ``grace``."""
    began = time.monotonic()
    os.kill(worker.process.pid, signal.SIGTERM)
    try:
        code = worker.process.wait(grace)
        return Stopped(code, time.monotonic() - began, sigkilled=False)
    except subprocess.TimeoutExpired:
        os.killpg(worker.process.pid, signal.SIGKILL)
        code = worker.process.wait(10)
        return Stopped(code, time.monotonic() - began, sigkilled=True)


def publish(broker: BrokerEnv, count: int, seconds: float) -> list[str]:
    labels = [f"task{i}" for i in range(count)]
    with Publisher(broker.settings, registry=SCALEIN_REGISTRY) as publisher:
        for label in labels:
            publisher.publish(LONG, {"label": label, "seconds": seconds})
    return labels


def stop_idle(worker: WorkerProcess) -> None:
    """Stop a worker whose tasks all recorded themselves done: SIGTERM to its main process alone.

    A task records ``done`` before its pool process hands the result to the main process, which
    acknowledges the message only then. The warm shutdown waits for that. A SIGTERM to the whole
    process group (``WorkerProcess.stop``) also reaches the pool processes, which quit at once: one
    still in that window is a lost worker, and its completed task's message goes back to the queue.
    """
    stopped = stop_like_kubernetes(worker, IDLE_GRACE)
    assert not stopped.sigkilled and stopped.exit_code == 0, worker.output()


def assert_nothing_left(broker: BrokerEnv, workers: Mapping[str, WorkerProcess]) -> None:
    """No message is waiting or held unacknowledged, so no duplicate can still turn up later."""
    name = queue_name(LONG, broker.namespace)
    with Connection(broker.broker_url) as conn:
        left = depths(conn, [name, dlq_name(name)])
    held: list[dict[str, Any]] = []
    if broker.kind == "redis":
        # Kombu's index of delivered, unacknowledged messages: [message, exchange, routing key].
        records = map(json.loads, redis.Redis.from_url(broker.broker_url).hvals("unacked"))
        held = [message for message, _, routing_key in records if routing_key == name]
    assert (left, len(held)) == ([0, 0], 0), leftovers(broker, workers, held)


def leftovers(
    broker: BrokerEnv, workers: Mapping[str, WorkerProcess], held: list[dict[str, Any]]
) -> str:
    """The messages left (whose task, a redelivery or not) and what the workers logged about them
    and about their shutdown: which worker handed a task back, or lost it, and why."""
    found = [("unacknowledged", message["headers"]) for message in held]
    try:
        found += queued_headers(broker)
    except Exception as exc:  # a failing test's description: the assertion must still show
        found.append(("?", {"error": repr(exc)}))
    keys = ("id", "kwargsrepr", "retries", "redelivered")
    lines = [f"{where}: {[(k, headers.get(k)) for k in keys]}" for where, headers in found]
    ids = [str(headers["id"]) for _, headers in found if "id" in headers]
    marks = ["shutdown", "WARNING", "ERROR", "exited", "Restoring", *ids]
    for worker in workers.values():
        lines.append(f"--- {worker.log}: shutdown, warnings, errors and the left tasks")
        output = worker.output().splitlines()
        lines += [line[:400] for line in output if any(mark in line for mark in marks)]
    return "\n".join(lines)


def queued_headers(broker: BrokerEnv) -> list[tuple[str, dict[str, Any]]]:
    """The headers of the messages waiting in the queue and its DLQ, which are left in place."""
    name = queue_name(LONG, broker.namespace)
    found: list[tuple[str, dict[str, Any]]] = []
    with Connection(broker.broker_url) as conn:
        channel: Any = conn.channel()
        try:
            for queue in (name, dlq_name(name)):
                if broker.kind == "redis":
                    for key in redis_queue_keys(queue):
                        items = channel.client.lrange(key, 0, -1)
                        found += [(queue, json.loads(item)["headers"]) for item in items]
                    continue
                while (message := channel.basic_get(queue=queue, no_ack=False)) is not None:
                    found.append((queue, {**message.headers, **message.delivery_info}))
        finally:
            channel.close()  # RabbitMQ puts back what basic_get took, in its place
    return found


def test_sigterm_lets_running_tasks_finish_and_takes_no_new_work(
    broker: BrokerEnv, tmp_path: Path
) -> None:
    soft_timeout, grace = 10.0, 15.0  # the chart's grace: soft timeout + margin
    ledger = Ledger(broker)
    workers = start_workers(broker, tmp_path, soft_timeout)
    try:
        labels = publish(broker, 6, seconds=2.0)
        ledger.wait("a holds two tasks", lambda: len(ledger.started("a")) == CONCURRENCY, 15)
        held = sorted(ledger.started("a"))

        stopped = stop_like_kubernetes(workers["a"], grace)

        assert not stopped.sigkilled and stopped.exit_code == 0, workers["a"].output()
        # It did not wait for the deadline: the warm shutdown ends when its tasks do.
        assert stopped.seconds < soft_timeout
        ledger.wait("all tasks done", lambda: len(ledger.done()) >= len(labels), 30)
        stop_idle(workers["b"])
        assert_nothing_left(broker, workers)
    finally:
        for worker in workers.values():
            worker.stop()
    assert sorted(ledger.started("a")) == held  # no new work after SIGTERM
    assert sorted(ledger.done("a")) == held  # and what it held, it finished itself
    assert Counter(ledger.done()) == Counter(labels)  # each exactly once: 0 lost, 0 twice
    assert Counter(ledger.started()) == Counter(labels)  # nothing had to run again


def test_sigterm_past_the_deadline_hands_tasks_back_before_the_sigkill(
    broker: BrokerEnv, tmp_path: Path
) -> None:
    # Tasks outlast the soft timeout; the cold shutdown then has 11 s before the SIGKILL, more
    # than the 5 s one broker call in it may block (its usual 1.5 s took over 4 s once in CI).
    # Had nothing cut them short, a would finish its tasks itself: done("a") below says not.
    soft_timeout, grace, task_seconds = 1.0, 12.0, 6.0
    ledger = Ledger(broker)
    # b is stopped right after its last task recorded itself done, which may be before the ack
    # of that task: b's warm shutdown waits for it, without a's 1 s deadline (stop_idle).
    finish_on_stop = {"b": {"TASKLANE_SOFT_SHUTDOWN_TIMEOUT": "10"}}
    workers = start_workers(broker, tmp_path, soft_timeout, finish_on_stop)
    try:
        labels = publish(broker, 4, seconds=task_seconds)
        ledger.wait("a holds two tasks", lambda: len(ledger.started("a")) == CONCURRENCY, 15)
        held = sorted(ledger.started("a"))

        stopped = stop_like_kubernetes(workers["a"], grace)

        # Handed back and gone before Kubernetes' SIGKILL, with a clean exit.
        assert not stopped.sigkilled and stopped.exit_code == 0, workers["a"].output()
        assert "cold shutdown, their messages go back to the broker" in workers["a"].output()
        # At once, not after Redis's visibility timeout: b runs them as soon as it is free.
        ledger.wait("all tasks done", lambda: len(ledger.done()) >= len(labels), 60)
        stop_idle(workers["b"])
        assert_nothing_left(broker, workers)
    finally:
        for worker in workers.values():
            worker.stop()
    assert ledger.done("a") == []  # a finished nothing: every task it held was cut short
    assert sorted(ledger.started("a")) == held  # and it took no new work
    assert Counter(ledger.done()) == Counter(labels)  # each completed exactly once, all on b
    assert sorted(ledger.done("b")) == sorted(labels)
    # At least once: the handed-back tasks ran again from the start.
    assert Counter(ledger.started()) == Counter(labels) + Counter(held)


def test_sigkill_before_the_hand_back_redelivers_the_tasks_to_the_other_worker(
    broker: BrokerEnv, tmp_path: Path
) -> None:
    # A grace period shorter than the derived timeout (a node drain with a short grace, a grace
    # set by hand): the SIGKILL lands while a still runs its tasks, before it hands them back.
    task_seconds, grace = 6.0, 2.0
    soft_timeout = derived_soft_shutdown_timeout(broker.settings, (LONG,))
    # A short visibility timeout the platform takes without a warning: 1 s past the longest hold.
    short = broker.settings.model_copy(update={"visibility_timeout": longest_hold((LONG,)) + 1})
    visibility = visibility_timeout(short, (LONG,))
    env = {"TASKLANE_VISIBILITY_TIMEOUT": f"{visibility:g}"}
    # Only b sweeps often: a sweep holds a Redis lock, which a SIGKILL would leave for a minute.
    extra_env = {"a": env, "b": {**env, "SCALEIN_RESTORE_INTERVAL": str(RESTORE_INTERVAL)}}
    if broker.kind == "redis":
        # a got them before the kill; b's sweep restores them once older than the timeout.
        redelivery = visibility + RESTORE_INTERVAL
    else:
        redelivery = 0.0  # RabbitMQ requeues them as the killed worker's connection closes
    ledger = Ledger(broker)
    workers = start_workers(broker, tmp_path, soft_timeout, extra_env)
    try:
        published = time.monotonic()
        labels = publish(broker, 4, seconds=task_seconds)
        ledger.wait("a holds two tasks", lambda: len(ledger.started("a")) == CONCURRENCY, 15)
        held = sorted(ledger.started("a"))

        stopped = stop_like_kubernetes(workers["a"], grace)

        # Killed with its tasks unfinished and nothing handed back.
        output = workers["a"].output()
        assert stopped.sigkilled and stopped.exit_code == -signal.SIGKILL, output
        assert "cold shutdown" not in output and "Restoring" not in output, output
        assert ledger.done("a") == []
        # b runs them once they are back and its own two tasks (up to task_seconds) have ended.
        ledger.wait(
            "a's tasks rerun on b",
            lambda: set(held) <= set(ledger.started("b")),
            max(redelivery, task_seconds) + MARGIN,
        )
        rerun = time.monotonic()
        ledger.wait(
            "all tasks done", lambda: len(ledger.done()) >= len(labels), task_seconds + MARGIN
        )
        stop_idle(workers["b"])
        assert_nothing_left(broker, workers)
    finally:
        for worker in workers.values():
            worker.stop()
    if broker.kind == "redis":
        # Kombu's sweep brought them back, not before the visibility timeout: nothing else did.
        assert rerun - published >= visibility
    assert sorted(ledger.started("a")) == held  # a took no new work after SIGTERM
    assert Counter(ledger.done()) == Counter(labels)  # each completed exactly once: 0 lost, 0 twice
    assert sorted(ledger.done("b")) == sorted(labels)  # all on b
    # At least once: the killed worker's tasks ran again from the start.
    assert Counter(ledger.started()) == Counter(labels) + Counter(held)
