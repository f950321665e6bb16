"""A plain Celery worker, with no Tasklane consumer, for messages Tasklane publishes.

Run as ``celery -A tests.support.plain_celery_service worker``; the broker, result backend and
namespace come from the ``TASKLANE_*`` variables. It is Celery's own consumer with Tasklane's
queue declaration and Kombu transport options (the priority sub-lists on Redis), as
docs/protocol.md tells a non-Tasklane worker to configure itself.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from tasklane.settings import load_settings
from tasklane.wire.broker import transport_options
from tasklane.wire.routing import QueueOptions, work_queue
from tests.support.plain_contracts import PLAIN_ECHO

settings = load_settings()
app = Celery(
    "plain", broker=settings.require_broker(), backend=os.environ["TASKLANE_RESULT_BACKEND"]
)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    broker_transport_options=transport_options(settings),
    task_queues=[work_queue(PLAIN_ECHO, settings.namespace, QueueOptions.of(settings))],
    worker_prefetch_multiplier=1,
)


@app.task(name=PLAIN_ECHO.name)
def echo(**kwargs: Any) -> dict[str, Any]:
    """The keyword arguments as received, and the headers Tasklane added."""
    return kwargs
