"""The quick start's promise, at scale: with the broker down, 1,000 orders posted to its view
(``runserver`` on PostgreSQL) all succeed, and once the broker is back the relay's 2,000 tasks
reach a real notifier worker and are each delivered exactly once."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from notifier import identity
from tasklane.contracts import SEND_EMAIL, SEND_IM
from tasklane_dev.sinks import ReceivedRequest, SmtpSink, WebhookSink
from tests.integration.django.example_support import (
    ACCESS_TOKEN,
    ROBOT_SECRET,
    ROBOT_SECRET_REF,
    ExampleProcess,
    dingtalk_sign,
    example_database,
    example_env,
    manage,
    runserver,
)
from tests.support import eventually
from tests.support.harness import RedisServer, WorkerProcess

# Posting, relaying and delivering 1,000 orders takes minutes on two busy cores.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ORDERS = 1000
CLIENTS = 8  # requests in flight at once


def order(number: int) -> dict[str, Any]:
    return {"customer_email": f"customer{number}@example.com", "item": "Tea tin", "quantity": 1}


def post_orders(url: str) -> list[tuple[int, Any]]:
    """POST ``ORDERS`` orders, ``CLIENTS`` at a time; each answer's status and JSON body."""
    import httpx

    with httpx.Client(base_url=url, timeout=60) as client:

        def post(number: int) -> tuple[int, Any]:
            response = client.post("/orders/", json=order(number))
            return response.status_code, response.json() if response.content else None

        with ThreadPoolExecutor(CLIENTS) as pool:
            return list(pool.map(post, range(ORDERS)))


def query(database: str, sql: str) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` in the quick start's database."""
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={database}") as connection:
        return connection.execute(sql).fetchall()


def outbox_states(database: str) -> dict[str, int]:
    """Rows of the quick start's outbox by state."""
    return dict(query(database, "SELECT state, count(*) FROM tasklane_outbox GROUP BY state"))


def tried_rows(database: str) -> int:
    """Pending rows the relay failed to send, the broker's error on record."""
    ((count,),) = query(
        database,
        "SELECT count(*) FROM tasklane_outbox WHERE state = 'pending' AND attempts > 0"
        " AND last_error LIKE '%unavailable%'",
    )
    return int(count)


def leftovers(broker: RedisServer, namespace: str) -> list[str]:
    """What is still on the broker: notifier queues (DLQs included) and unacknowledged messages."""
    import redis

    with redis.Redis.from_url(broker.url) as client:
        lists = [
            key for key in client.scan_iter(f"{namespace}notifier.*") if client.type(key) == b"list"
        ]
        unacked = client.hlen("unacked")
    return sorted(key.decode() for key in lists) + ([f"{unacked} unacked"] if unacked else [])


def robot_order(request: ReceivedRequest) -> int:
    """The order a DingTalk request tells of, after checking it is signed as DingTalk wants."""
    params = request.query
    assert request.path == "/robot/send" and params["access_token"] == ACCESS_TOKEN
    assert params["sign"] == dingtalk_sign(ROBOT_SECRET, params["timestamp"]), request.target
    title = request.json()["markdown"]["title"]
    return int(title.removeprefix("New order "))


def test_orders_taken_while_the_broker_is_down_are_each_delivered_once_after_it_returns(
    tmp_path: Path, smtp_sink: SmtpSink, webhook_sink: WebhookSink
) -> None:
    namespace = f"t{uuid.uuid4().hex[:10]}."
    broker = RedisServer(tmp_path)  # its port is chosen; nothing listens there yet: down
    timings: dict[str, float] = {}
    began = time.monotonic()
    with example_database() as database:
        env = {
            **example_env(
                database=database,
                broker_url=broker.url,
                namespace=namespace,
                robot_url=f"{webhook_sink.url}/robot/send",
            ),
            # Each failed send gives up after 1 s (5 s by default): the outage shows sooner.
            "TASKLANE_PUBLISH_TIMEOUT": "1",
        }
        manage("migrate", "--verbosity", "0", env=env)
        relay = ExampleProcess(["tasklane_relay"], env, tmp_path / "relay.log")
        worker: WorkerProcess | None = None
        try:
            with runserver(env, tmp_path / "runserver.log") as url:
                relay.wait_for_output("relaying outbox rows")  # started meanwhile
                timings["set up"] = time.monotonic() - began
                started = time.monotonic()
                answers = post_orders(url)
                timings["1,000 requests"] = time.monotonic() - started

            assert Counter(status for status, _ in answers) == {201: ORDERS}
            orders = [body["order"] for _, body in answers]
            assert len(set(orders)) == ORDERS
            task_ids = {task_id for _, body in answers for task_id in body["tasks"].values()}
            assert len(task_ids) == 2 * ORDERS
            assert outbox_states(database) == {"pending": 2 * ORDERS}
            # The relay tried, failed, kept the rows pending with the error and backs off.
            eventually(
                lambda: tried_rows(database),
                timeout=60,
                message=lambda: f"a failed attempt on record:\n{relay.output()}",
            )
            assert outbox_states(database) == {"pending": 2 * ORDERS}

            broker.start()
            started = time.monotonic()
            worker = WorkerProcess(
                "notifier",
                {
                    "TASKLANE_BROKER_URL": broker.url,
                    "TASKLANE_NAMESPACE": namespace,
                    "TASKLANE_NOTIFIER_SMTP_PORT": str(smtp_sink.port),
                    "TASKLANE_NOTIFIER_WEBHOOK_ALLOW": "127.0.0.1/32",
                    "TASKLANE_NOTIFIER_SECRETS": json.dumps({ROBOT_SECRET_REF: ROBOT_SECRET}),
                },
                tmp_path / "worker.log",
                concurrency=4,
            )
            worker.wait_ready()
            eventually(
                lambda: outbox_states(database) == {"sent": 2 * ORDERS},
                timeout=180,
                interval=0.5,
                message=lambda: (
                    f"every row sent; {outbox_states(database)}\n{relay.output()[-3000:]}"
                ),
            )
            timings["all sent"] = time.monotonic() - started
            smtp_sink.wait_for(ORDERS, timeout=600)
            webhook_sink.wait_for(ORDERS, timeout=600)
            timings["all delivered"] = time.monotonic() - started
            # Drained: a duplicate, or a retry, would still be on the broker now.
            eventually(
                lambda: not leftovers(broker, namespace),
                timeout=120,
                interval=0.5,
                message=lambda: f"nothing left on the broker; {leftovers(broker, namespace)}",
            )
            assert relay.terminate() == 0  # SIGTERM: the relay finishes its batch and exits 0
        finally:
            if worker is not None:
                worker.stop()
            relay.stop()
            broker.kill()
        rows = {task_id for (task_id,) in query(database, "SELECT task_id FROM tasklane_outbox")}
    timings["whole test"] = time.monotonic() - began
    # Seen with -s: the cost of each phase (after the broker's return for "all sent/delivered").
    print("\n" + ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in timings.items()))
    assert rows == task_ids  # one row per task the view answered with

    emails = smtp_sink.messages
    subjects = Counter(mail.message["Subject"] for mail in emails)
    assert subjects == Counter(f"Order {number} confirmed" for number in orders)
    expected_ids = {
        identity.message_id(
            identity.delivery_key(
                namespace=namespace,
                task=SEND_EMAIL.name,
                idempotency_key=f"order-{number}-confirmation",
                task_id="",
            ),
            "localhost",  # the default sender's domain
        )
        for number in orders
    }
    assert Counter(mail.message["Message-ID"] for mail in emails) == Counter(expected_ids)

    requests = webhook_sink.requests
    assert Counter(robot_order(request) for request in requests) == Counter(orders)
    expected_keys = {
        identity.delivery_key(
            namespace=namespace,
            task=SEND_IM.name,
            idempotency_key=f"order-{number}-robot",
            task_id="",
        )
        for number in orders
    }
    assert Counter(request.headers["idempotency-key"] for request in requests) == Counter(
        expected_keys
    )
