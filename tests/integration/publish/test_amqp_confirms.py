"""Batched publisher confirms on RabbitMQ: every message confirmed, acks waited for per batch.

Each test declares throwaway queues of its namespace and deletes them after. A broker that stops
answering is a TCP proxy of the test's own that stops forwarding; RabbitMQ itself is never stopped.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.messaging import Producer

from tasklane.settings import Settings
from tasklane.wire.amqp_confirms import (
    ConfirmedChannel,
    ConfirmTimeoutError,
    PublishNackedError,
    _Confirms,
)
from tasklane.wire.broker import connect
from tasklane.wire.protocol import CONTENT_ENCODING, CONTENT_TYPE, TaskMessage, task_message
from tasklane_dev.sinks import free_port
from tests.support.harness import BrokerEnv, publish_through_kombu

TIMEOUT = 30.0

MakeQueue = Callable[..., str]


def messages(count: int, *, priority: int = 0, start: int = 0) -> list[TaskMessage]:
    return [
        task_message("tests.confirms.run", str(uuid.uuid4()), {"n": n}, priority=priority)
        for n in range(start, start + count)
    ]


@pytest.fixture
def connection(rabbitmq_broker: BrokerEnv) -> Iterator[Connection]:
    """A publisher's connection: Tasklane's transport options, so confirm_publish is on."""
    with connect(rabbitmq_broker.settings, socket_timeout=TIMEOUT) as conn:
        yield conn


@pytest.fixture
def make_queue(rabbitmq_broker: BrokerEnv) -> Iterator[MakeQueue]:
    """Declares durable queues of the test's namespace; deletes them after the test."""
    names: list[str] = []

    def make(suffix: str, **arguments: Any) -> str:
        name = f"{rabbitmq_broker.namespace}confirms.{suffix}"
        with Connection(rabbitmq_broker.broker_url) as conn:
            Queue(name, durable=True, queue_arguments=arguments or None).bind(
                conn.default_channel
            ).declare()
        names.append(name)
        return name

    yield make
    with Connection(rabbitmq_broker.broker_url) as conn:
        for name in names:
            conn.default_channel.queue_delete(name)


def depth(broker: BrokerEnv, queue: str) -> int:
    """Messages waiting in ``queue``, through a passive declare on a connection of its own."""
    with Connection(broker.broker_url) as conn:
        return int(conn.default_channel.queue_declare(queue, passive=True).message_count)


def take_all(broker: BrokerEnv, queue: str) -> list[Any]:
    """Every message of ``queue`` in order, as py-amqp received them (bodies undecoded)."""
    taken = []
    with Connection(broker.broker_url) as conn:
        channel = conn.channel()
        channel.auto_decode = False
        while (message := channel.basic_get(queue, no_ack=True)) is not None:
            taken.append(message)
        channel.close()
    return taken


def test_a_batch_is_all_queued_when_publish_returns_with_fewer_acks_than_messages(
    rabbitmq_broker: BrokerEnv, connection: Connection, make_queue: MakeQueue
) -> None:
    queue = make_queue("batch")
    confirmed = ConfirmedChannel(Producer(connection.default_channel))
    batch = messages(5000)

    confirmed.publish(batch, queue, timeout=TIMEOUT)

    assert depth(rabbitmq_broker, queue) == 5000
    # Per-message confirms would take one ack frame per message; RabbitMQ acked in groups.
    assert 0 < confirmed.ack_frames < len(batch)


def test_messages_are_the_same_as_the_plain_producer_publish_sends(
    rabbitmq_broker: BrokerEnv, connection: Connection, make_queue: MakeQueue
) -> None:
    plain_queue, batched_queue = make_queue("plain"), make_queue("batched")
    sent = messages(1, priority=7)[0]
    sent.headers["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    # The path Tasklane takes today, on a channel of its own (it confirms each message).
    with connect(rabbitmq_broker.settings, socket_timeout=TIMEOUT) as plain_connection:
        publish_through_kombu(plain_connection, sent, plain_queue)
    ConfirmedChannel(Producer(connection.default_channel)).publish(
        [sent], batched_queue, timeout=TIMEOUT
    )

    (plain,) = take_all(rabbitmq_broker, plain_queue)
    (batched,) = take_all(rabbitmq_broker, batched_queue)
    assert batched.body == plain.body == sent.body
    assert batched.properties == plain.properties
    assert batched.properties["application_headers"] == sent.headers
    assert batched.properties["delivery_mode"] == 2
    assert batched.properties["priority"] == 7
    assert batched.properties["correlation_id"] == sent.task_id
    assert batched.properties["content_type"] == CONTENT_TYPE
    assert batched.properties["content_encoding"] == CONTENT_ENCODING


def test_batches_and_single_messages_mix_on_one_channel_in_order(
    rabbitmq_broker: BrokerEnv, connection: Connection, make_queue: MakeQueue
) -> None:
    queue = make_queue("mixed")
    producer = Producer(connection.default_channel)
    channel: Any = producer.channel
    selects: list[int] = []
    select = channel.confirm_select

    def counted_select(*args: Any) -> Any:
        selects.append(1)
        return select(*args)

    channel.confirm_select = counted_select
    sent: list[TaskMessage] = []
    confirmed = ConfirmedChannel(producer)

    for size in (3, 1, 250, 1, 1):
        batch = messages(size, start=len(sent))
        confirmed.publish(batch, queue, timeout=TIMEOUT)
        sent += batch
        assert depth(rabbitmq_broker, queue) == len(sent)
    # Another instance on the same channel continues its numbering.
    batch = messages(40, start=len(sent))
    ConfirmedChannel(producer).publish(batch, queue, timeout=TIMEOUT)
    sent += batch

    assert len(selects) == 1
    taken = take_all(rabbitmq_broker, queue)
    assert [m.properties["correlation_id"] for m in taken] == [m.task_id for m in sent]


def test_a_nack_names_how_many_of_the_batch_were_confirmed(
    rabbitmq_broker: BrokerEnv, connection: Connection, make_queue: MakeQueue
) -> None:
    # A full queue that refuses new messages makes RabbitMQ nack them.
    queue = make_queue("full", **{"x-max-length": 2, "x-overflow": "reject-publish"})
    confirmed = ConfirmedChannel(Producer(connection.default_channel))
    first = messages(1)
    confirmed.publish(first, queue, timeout=TIMEOUT)

    batch = messages(5, start=1)
    with pytest.raises(PublishNackedError) as refused:
        confirmed.publish(batch, queue, timeout=TIMEOUT)

    assert (refused.value.confirmed, refused.value.total) == (1, 5)
    assert "the first 1 were confirmed" in str(refused.value)
    taken = take_all(rabbitmq_broker, queue)
    assert [m.properties["correlation_id"] for m in taken] == [first[0].task_id, batch[0].task_id]
    # The channel's numbering survived the nacks: the next batch is confirmed as a whole.
    confirmed.publish(messages(2, start=6), queue, timeout=TIMEOUT)
    assert depth(rabbitmq_broker, queue) == 2
    with pytest.raises(PublishNackedError) as refused:
        confirmed.publish(messages(1, start=8), queue, timeout=TIMEOUT)
    assert refused.value.confirmed == 0


def test_messages_an_error_kept_from_the_socket_do_not_shift_the_numbering(
    rabbitmq_broker: BrokerEnv, connection: Connection, make_queue: MakeQueue
) -> None:
    queue = make_queue("unsendable")
    confirmed = ConfirmedChannel(Producer(connection.default_channel))
    confirmed.publish(messages(1), queue, timeout=TIMEOUT)
    batch = messages(3, start=1)
    batch[2].headers["x-unsendable"] = object()  # no AMQP table type

    with pytest.raises(Exception, match="not handled by amqp"):
        confirmed.publish(batch, queue, timeout=TIMEOUT)

    assert depth(rabbitmq_broker, queue) == 1
    # Had the unsent messages been numbered, these acks would never be enough: a timeout.
    confirmed.publish(messages(3, start=4), queue, timeout=5.0)
    assert depth(rabbitmq_broker, queue) == 4


class FreezingProxy:
    """Forwards a free loopback port to RabbitMQ until :meth:`freeze`; then it drops every byte
    both ways and keeps the connections open, as a broker that stops answering."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.frozen = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.frozen.set()

    def close(self) -> None:
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self.target)
                self._sockets += [client, upstream]
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not self.frozen.is_set():
                    sink.sendall(data)


def test_acks_that_do_not_come_time_out_with_a_retryable_connection_error(
    rabbitmq_broker: BrokerEnv, make_queue: MakeQueue
) -> None:
    queue = make_queue("silent")
    proxy = FreezingProxy(("127.0.0.1", 5672))
    settings = Settings(
        broker_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}//",
        result_backend=rabbitmq_broker.result_backend,
        namespace=rabbitmq_broker.namespace,
    )
    conn = connect(settings, socket_timeout=TIMEOUT)
    try:
        confirmed = ConfirmedChannel(Producer(conn.default_channel))
        confirmed.publish(messages(1), queue, timeout=TIMEOUT)
        proxy.freeze()

        with pytest.raises(ConfirmTimeoutError) as timed_out:
            confirmed.publish(messages(10), queue, timeout=1.0)

        assert "10 of 10 messages not confirmed within 1s" in str(timed_out.value)
        # What a publisher's outage handling catches, and Kombu's retry too.
        assert isinstance(timed_out.value, conn.recoverable_connection_errors)
    finally:
        proxy.close()
        conn.collect(socket_timeout=0.1)  # no goodbye through a proxy that is gone
    assert depth(rabbitmq_broker, queue) == 1


class _Events:
    def __init__(self) -> None:
        self.events: defaultdict[str, set[Callable[[int, bool], None]]] = defaultdict(set)


def test_acks_in_any_order_and_multiple_nacks_are_counted() -> None:
    # The orders RabbitMQ may use but seldom does on one queue: single acks out of order, a
    # multiple nack over what is still unresolved.
    state = _Confirms(_Events())
    state.on_ack(2, False)
    state.on_ack(3, False)
    assert state.resolved_through == 0
    state.on_ack(1, False)
    assert (state.resolved_through, state.resolved_singles) == (3, set())
    state.on_ack(5, False)
    state.on_nack(6, True)
    assert (state.resolved_through, state.nacked) == (6, [4])
    state.on_ack(9, True)
    assert (state.resolved_through, state.resolved_singles, state.frames) == (9, set(), 6)
