"""The transactional outbox's cost: relay throughput, and what it adds to a Django request.

Against a PostgreSQL database of its own (made and dropped here, on ``--postgres``) and Redis:

* **relay**: ``--rows`` email rows written to the outbox (``publish_on_commit``, 100 per
  transaction; not timed), then ``Relay.drain()`` with the default batch of 500 timed until every
  row is sent and marked. Baseline, in the same round: ``Publisher.publish_many`` of the same
  payloads (validate, encode, send). Rows per second of each, median of ``--rounds``; the ratio's
  target is >= 0.5x.
* **request**: ``--requests`` POSTs through Django's test client to three views that each insert
  a row in one transaction: one publishes nothing, one ``publish_on_commit`` with the outbox on
  (one more row and a NOTIFY in that transaction), one ``publish`` straight to the broker.
  p50 and p99 of each and their ratios against the view that publishes nothing.

    .venv/bin/python bench/outbox_relay.py [--rows 20000] [--requests 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import redis

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from run import broker  # noqa: E402  (the same broker choice as the other benchmarks)

NAMESPACE = "perfoutbox."
TARGET_RATIO = 0.5
ROWS_PER_TRANSACTION = 100


def email(i: int) -> dict[str, Any]:
    return {
        "to": [f"user{i}@example.com"],
        "subject": f"Welcome {i}",
        "template": "welcome",
        "context": {"name": f"User {i}", "product": "Tasklane"},
    }


@contextmanager
def database(admin_dsn: str) -> Iterator[str]:
    """A new PostgreSQL database for this run, dropped at the end."""
    name = f"tasklane_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        from django.conf import settings

        if settings.configured:
            from django.db import connections

            connections.close_all()
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def signup(request: Any, publish: Callable[[int], None] | None) -> Any:
    """What the views share: a signup row in one transaction, and a publish or none."""
    from django.db import connection, transaction
    from django.http import JsonResponse

    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO bench_signup (email) VALUES (%s) RETURNING id", ["a@b.c"])
            (row,) = cursor.fetchone()
        if publish is not None:
            publish(row)
    return JsonResponse({"id": row})


def configure(name: str, broker_url: str, postgres: dict[str, str]) -> None:
    import django
    from django.conf import settings
    from django.urls import path

    def on_commit(row: int) -> None:
        from tasklane.contrib.django import publish_on_commit

        publish_on_commit("notifier.email.send", email(row))

    def now(row: int) -> None:
        from tasklane.contrib.django import publish

        publish("notifier.email.send", email(row))

    urls = ModuleType("outbox_bench_urls")  # the URLconf, made here rather than in a file
    urls.urlpatterns = [  # type: ignore[attr-defined]
        path("nothing", lambda request: signup(request, None)),
        path("outbox", lambda request: signup(request, on_commit)),
        path("direct", lambda request: signup(request, now)),
    ]
    sys.modules[urls.__name__] = urls
    settings.configure(
        SECRET_KEY="bench",
        DEBUG=False,
        USE_TZ=True,
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=urls.__name__,
        MIDDLEWARE=[],
        INSTALLED_APPS=["tasklane.contrib.django"],
        DATABASES={
            "default": {"ENGINE": "django.db.backends.postgresql", "NAME": name, **postgres}
        },
        TASKLANE={"BROKER_URL": broker_url, "NAMESPACE": NAMESPACE, "OUTBOX": True},
    )
    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE bench_signup (id bigserial PRIMARY KEY, email text)")


def clear_queues(broker_url: str) -> None:
    client = redis.Redis.from_url(broker_url)
    keys = list(client.scan_iter(f"{NAMESPACE}*")) + list(
        client.scan_iter(f"_kombu.binding*{NAMESPACE}*")
    )
    if keys:
        client.unlink(*keys)


def relay_round(rows: int) -> tuple[float, float]:
    """(relay rows/s, publish_many messages/s) of one round."""
    from django.db import transaction

    from tasklane.contrib.django import publish_on_commit
    from tasklane.contrib.django.models import OutboxMessage
    from tasklane.contrib.django.publishing import publisher
    from tasklane.contrib.django.relay import Relay

    OutboxMessage.objects.all().delete()
    for start in range(0, rows, ROWS_PER_TRANSACTION):
        with transaction.atomic():
            for i in range(start, min(start + ROWS_PER_TRANSACTION, rows)):
                publish_on_commit("notifier.email.send", email(i))
    relay = Relay()
    pending = OutboxMessage.objects.filter(state="pending")
    started = time.perf_counter()
    sent = 0
    while sent < rows:
        # drain() stops when rows are held back by a transaction still running elsewhere.
        sent += relay.drain()
        if sent < rows and pending.exists():
            time.sleep(0.01)
    relay_seconds = time.perf_counter() - started
    assert not pending.exists()
    clear_queues(publisher().settings.require_broker())

    payloads = [email(i) for i in range(rows)]
    started = time.perf_counter()
    publisher().publish_many("notifier.email.send", payloads)
    direct_seconds = time.perf_counter() - started
    clear_queues(publisher().settings.require_broker())
    return rows / relay_seconds, rows / direct_seconds


def latencies(path: str, requests: int) -> list[float]:
    from django.test import Client

    client = Client()
    for _ in range(min(100, requests)):  # warm up connections, URL resolving, the publisher
        client.post(path)
    seconds = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.post(path)
        seconds.append(time.perf_counter() - started)
        assert response.status_code == 200, response.content
    return seconds


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", help="Redis broker URL (default: bench/run.py's)")
    parser.add_argument("--postgres", default="host=127.0.0.1 port=5432 user=postgres")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2_000)
    args = parser.parse_args()
    dsn = dict(part.split("=", 1) for part in args.postgres.split())
    postgres = {"HOST": dsn.get("host", ""), "PORT": dsn.get("port", ""), "USER": dsn["user"]}
    with broker(args.broker) as broker_url, database(f"{args.postgres} dbname=postgres") as name:
        configure(name, broker_url, postgres)
        from tasklane.contrib.django.models import OutboxMessage

        print(
            f"Outbox relay on PostgreSQL, Redis at {broker_url}: {args.rows} rows x {args.rounds}"
        )
        rounds = [relay_round(args.rows) for _ in range(args.rounds)]
        relay = statistics.median(r for r, _ in rounds)
        direct = statistics.median(d for _, d in rounds)
        ratio = relay / direct
        print(f"  relay (drain, batch 500)      {relay:>9,.0f} rows/s")
        print(f"  publish_many (baseline)       {direct:>9,.0f} messages/s")
        verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
        print(f"  ratio {ratio:.2f}x (target >= {TARGET_RATIO}x: {verdict})")
        OutboxMessage.objects.all().delete()

        print(f"Django request latency, {args.requests} POSTs per view (test client, in process)")
        figures = {path: latencies(f"/{path}", args.requests) for path in ("nothing", "outbox")}
        figures["direct"] = latencies("/direct", args.requests)
        base = figures["nothing"]
        for path, seconds in figures.items():
            p50, p99 = percentile(seconds, 50), percentile(seconds, 99)
            print(
                f"  {path:<8} p50 {p50 * 1000:6.2f} ms ({p50 / percentile(base, 50):4.2f}x)"
                f"  p99 {p99 * 1000:6.2f} ms ({p99 / percentile(base, 99):4.2f}x)"
            )
        clear_queues(broker_url)


if __name__ == "__main__":
    main()
