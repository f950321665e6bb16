"""Rate limits shared by replicas, a broker outage, SIGTERM draining and trace continuation."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis

from tasklane.wire.broker import redis_queue_keys
from tests.integration.gateway.conftest import NOTIFIER_TOKEN, StartGateway, gateways
from tests.support import eventually
from tests.support.gateway import publisher_entry, waiting
from tests.support.harness import BrokerEnv, RedisServer, cleanup
from tests.support.otlp import OtlpReceiver

EMAIL = "/v1/tasks/notifier.email.send"
BODY = {"to": ["ada@example.com"], "subject": "s", "text": "t"}


def test_rate_limit_is_shared_by_two_gateways_and_answers_retry_after(
    start_redis_gateway: StartGateway, redis_broker: BrokerEnv
) -> None:
    slow = [publisher_entry("slow", NOTIFIER_TOKEN, ["notifier.*"], rate=0.01, burst=2)]
    first, second = start_redis_gateway(slow), start_redis_gateway(slow)
    with first.client(NOTIFIER_TOKEN) as one, second.client(NOTIFIER_TOKEN) as two:
        assert one.post(EMAIL, json=BODY).status_code == 202
        assert two.post(EMAIL, json=BODY).status_code == 202
        limited = [one.post(EMAIL, json=BODY), two.post(EMAIL, json=BODY)]
        batch = one.post(f"{EMAIL}/batch", json={"payloads": [BODY]})
    for response in [*limited, batch]:
        assert response.status_code == 429, response.text
        assert response.json()["type"] == "https://tasklane.dev/problems/rate-limited"
        retry_after = response.headers["Retry-After"]
        assert retry_after.isdigit() and int(retry_after) >= 1
    assert waiting(redis_broker, "notifier.email") == 2


def test_broker_outage_answers_503_without_blocking_other_requests(
    redis_url: str, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path).start()
    env = BrokerEnv("redis", server.url, redis_url, f"t{uuid.uuid4().hex[:10]}.")
    started = contextlib.ExitStack()
    start = started.enter_context(gateways(env, tmp_path))
    try:
        gateway = start()
        server.kill()
        answers: list[httpx.Response] = []
        key = {"Idempotency-Key": "outage-1"}

        def post() -> None:
            with gateway.client(NOTIFIER_TOKEN) as client:
                answers.append(client.post(EMAIL, json=BODY, headers=key))

        thread = threading.Thread(target=post)
        thread.start()
        state = redis.Redis.from_url(redis_url)
        eventually(
            lambda: state.exists(f"{env.namespace}gateway:idem:shop:outage-1"),
            timeout=10,
            message="the first request to claim its key",
        )
        with gateway.client(NOTIFIER_TOKEN) as client:
            # Served while the first request's publish waits for the broker: the loop is free.
            assert client.get("/livez").status_code == 200
            in_flight = client.post(EMAIL, json=BODY, headers=key)
        assert in_flight.status_code == 409, in_flight.text
        thread.join(60)
        (answer,) = answers
        assert answer.status_code == 503, answer.text
        assert answer.json()["type"] == "https://tasklane.dev/problems/broker-unavailable"
        assert int(answer.headers["Retry-After"]) >= 1
        # Nothing was published, so the key is free for the client's retry.
        assert not state.exists(f"{env.namespace}gateway:idem:shop:outage-1")
        with gateway.client() as client:
            eventually(
                lambda: client.get("/readyz").status_code == 503,
                timeout=20,
                message="/readyz to report the broker down",
            )
    finally:
        started.close()
        server.kill()
        cleanup(BrokerEnv("redis", redis_url, redis_url, env.namespace))


def _raw_request(port: int, body: bytes) -> tuple[socket.socket, bytes]:
    """A connection that has sent a POST's headers; the body is the caller's to send."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST {EMAIL} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {NOTIFIER_TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head)
    return sock, body


def test_sigterm_drains_then_finishes_requests_in_flight_and_exits_cleanly(
    start_redis_gateway: StartGateway, redis_broker: BrokerEnv
) -> None:
    gateway = start_redis_gateway(TASKLANE_GATEWAY_SHUTDOWN_DELAY="120")
    sock, body = _raw_request(gateway.port, json.dumps(BODY).encode())
    sock.sendall(body[:10])  # the request is in flight: its body is not all here yet
    gateway.terminate()
    with gateway.client() as client:

        def draining() -> httpx.Response | None:
            response = client.get("/readyz")
            return response if response.status_code == 503 else None

        probe = eventually(draining, timeout=20, message="/readyz 503 once SIGTERM arrived")
        assert probe.json()["status"] == "draining"
        assert client.get("/livez").status_code == 200
    gateway.terminate()  # a second SIGTERM ends the drain: the listener closes

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", gateway.port), timeout=2).close()
        except ConnectionRefusedError:
            return True
        return False

    eventually(refused, timeout=20, message="the gateway to stop listening")
    assert gateway.process.poll() is None  # still finishing the request in flight
    sock.sendall(body[10:])
    answer = sock.recv(65536).decode()
    sock.close()
    assert answer.startswith("HTTP/1.1 202"), answer
    assert gateway.process.wait(30) == 0
    assert waiting(redis_broker, "notifier.email") == 1


def _queued_headers(broker: BrokerEnv) -> dict[str, Any]:
    client = redis.Redis.from_url(broker.broker_url)
    keys = redis_queue_keys(f"{broker.namespace}notifier.email")  # one list per priority
    (raw,) = [item for key in keys for item in client.lrange(key, 0, -1)]
    headers: dict[str, Any] = json.loads(raw)["headers"]
    return headers


def test_traceparent_continues_into_the_tasks_trace(
    redis_broker: BrokerEnv, tmp_path: Path
) -> None:
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    traceparent = f"00-{trace_id}-{parent}-01"
    with OtlpReceiver() as receiver:
        started = contextlib.ExitStack()
        start = started.enter_context(gateways(redis_broker, tmp_path))
        try:
            gateway = start(
                OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="200"
            )
            with gateway.client(NOTIFIER_TOKEN) as client:
                response = client.post(EMAIL, json=BODY, headers={"traceparent": traceparent})
            assert response.status_code == 202
            spans = receiver.wait_for(
                lambda got: any(s.name == "notifier.email.send publish" for s in got)
            )
        finally:
            started.close()
    (publish,) = [s for s in spans if s.name == "notifier.email.send publish"]
    assert (publish.trace_id, publish.parent_span_id, publish.kind) == (
        trace_id,
        parent,
        "PRODUCER",
    )
    assert publish.service == "tasklane-gateway"
    assert publish.attributes["messaging.message.id"] == response.json()["task_id"]
    # The message carries the publish span's context: the worker's run joins this trace.
    assert _queued_headers(redis_broker)["traceparent"] == (f"00-{trace_id}-{publish.span_id}-01")


def test_traceparent_is_passed_on_when_the_gateway_does_not_trace(
    start_redis_gateway: StartGateway, redis_broker: BrokerEnv
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    gateway = start_redis_gateway()
    with gateway.client(NOTIFIER_TOKEN) as client:
        response = client.post(EMAIL, json=BODY, headers={"traceparent": traceparent})
    assert response.status_code == 202
    assert _queued_headers(redis_broker)["traceparent"] == traceparent
