"""A test-only worker service whose tasks record every start and completion in Redis.

Run as ``celery -A tests.support.scalein_service worker``; settings come from the
environment, ``SCALEIN_WORKER`` names the worker in the records, and ``SCALEIN_RESTORE_INTERVAL``
(Redis only) sets how often it sweeps for messages past the visibility timeout.
"""

from __future__ import annotations

import os
import time

import redis

from tasklane.settings import is_redis_url, load_settings
from tasklane.worker.app import create_app
from tests.support.scalein_contracts import LONG, SCALEIN_REGISTRY, LongPayload, LongResult

settings = load_settings()
app = create_app("scalein", settings=settings, registry=SCALEIN_REGISTRY)
WORKER = os.environ.get("SCALEIN_WORKER", "?")

if os.environ.get("SCALEIN_RESTORE_INTERVAL") and is_redis_url(settings.broker_url):
    # Kombu's sweep returns unacknowledged messages older than the visibility timeout to their
    # queue every 10 s (tasklane.wire.broker makes every sweep scan), still slow for a test: here it
    # scans every SCALEIN_RESTORE_INTERVAL seconds.
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "unacked_restore_interval": int(os.environ["SCALEIN_RESTORE_INTERVAL"]),
    }


def record(event: str, label: str) -> None:
    """Append ``label@worker`` to the ``started`` or ``done`` list (durable, duplicates visible)."""
    client = redis.Redis.from_url(settings.require_state())
    client.rpush(f"{settings.namespace}scalein:{event}", f"{label}@{WORKER}")


@app.implement(LONG)
def run_long(payload: LongPayload) -> LongResult:
    """Sleeps, then records its completion; no retries, no idempotency key (reruns are visible)."""
    record("started", payload.label)
    time.sleep(payload.seconds)
    record("done", payload.label)
    return LongResult(label=payload.label, worker=WORKER)
