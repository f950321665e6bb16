"""A RabbitMQ worker outlives a partition its broker has not noticed yet.

After a silent partition the worker reconnects before RabbitMQ has dropped its old connection
(RabbitMQ notices missed heartbeats only after a minute or so). Celery's remote-control queue
(``<node>.celery.pidbox``) was exclusive to the old connection, so declaring it again failed with
``RESOURCE_LOCKED`` and the worker stopped (``Unrecoverable error``): the fault suite's netns cut
showed it. A proxy that closes only the worker's ends of its connections plays that partition.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from tasklane.contracts.ping import ping_contract
from tasklane.publish import Publisher
from tests.support import eventually
from tests.support.faults import TcpProxy
from tests.support.harness import RABBITMQ_URL, BrokerEnv, WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", 5672) as proxy:
        yield proxy


def test_a_worker_reconnects_while_rabbitmq_still_holds_its_old_connection(
    rabbitmq_broker: BrokerEnv, proxy: TcpProxy, tmp_path: Path
) -> None:
    via_proxy = RABBITMQ_URL.replace(":5672", f":{proxy.port}")
    env = {
        **rabbitmq_broker.env(),
        "TASKLANE_BROKER_URL": via_proxy,
        "TASKLANE_PREFETCH_MULTIPLIER": "1",
    }
    worker = WorkerProcess("notifier", env, tmp_path / "worker.log", concurrency=1)
    try:
        worker.wait_ready()
        held = proxy.connections_made
        proxy.drop_clients()  # RabbitMQ keeps the old connections open
        eventually(
            lambda: proxy.connections_made > held and "Connected to amqp://" in _after_loss(worker),
            timeout=60,
            message=lambda: f"the worker to connect again\n{worker.output()[-3000:]}",
        )
        # Connected again, with its remote-control queue declared again: it answers a broadcast
        # ping and runs a task, and it is still running.
        # Addressed to this worker: other tests' workers on the shared broker answer a broadcast
        # too, and a first answer from them alone is not this worker's.
        control = Celery(broker=RABBITMQ_URL)
        replies = eventually(
            lambda: control.control.ping(destination=[worker.node], timeout=1.0),
            timeout=60,
            message=lambda: f"a ping reply\n{worker.output()[-3000:]}",
        )
        assert any(worker.node in reply for reply in replies)
        # It consumes again. RabbitMQ still counts the old connection's consumer too, and may
        # hand it one message (prefetch 1) that comes back only when RabbitMQ drops that
        # connection (heartbeat timeout): of two pings, one at least reaches the new consumer.
        ping = ping_contract("notifier.email")
        with Publisher(rabbitmq_broker.settings) as publisher:
            handles = [publisher.publish(ping, {}) for _ in range(2)]
            answered = eventually(
                lambda: [handle for handle in handles if handle.ready()],
                timeout=30,
                message=lambda: f"a ping answered\n{worker.output()[-3000:]}",
            )
        assert answered[0].get(timeout=5).queue == "notifier.email"
        assert worker.process.poll() is None, worker.output()[-3000:]
        assert "RESOURCE_LOCKED" not in worker.output()
    finally:
        worker.stop()


def _after_loss(worker: WorkerProcess) -> str:
    """The worker's log from its first lost connection on."""
    output = worker.output()
    return output[output.find("Connection to broker lost") :] if "lost" in output else ""
