"""The Celery configuration every Tasklane process shares: workers, Beat, Flower, result readers.

One place says which broker and backend, with which transport options, and that JSON is the only
content accepted anywhere (pickle would run code on load).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasklane.wire.broker import is_sentinel_url, sentinel_options, transport_options
from tasklane.wire.routing import QueueOptions

if TYPE_CHECKING:
    from tasklane.settings import Settings

#: Kombu's Redis transport with each popped envelope checked (tasklane.wire.redis_transport).
REDIS_TRANSPORT = "tasklane.wire.redis_transport:Transport"
SENTINEL_TRANSPORT = "tasklane.wire.redis_transport:SentinelTransport"

#: The only serializer Tasklane writes or reads: tasks, results and events.
JSON_ONLY: dict[str, Any] = {
    "task_serializer": "json",
    "result_serializer": "json",
    "event_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": ["json"],
}


def base_config(settings: Settings, *, visibility_timeout: float | None = None) -> dict[str, Any]:
    """Broker, result backend, JSON only and the clock, from ``settings``.

    Args:
        settings: platform settings; a broker must be configured.
        visibility_timeout: Redis only; seconds before an unacknowledged message is redelivered.
    """
    return {
        "broker_url": settings.require_broker(),
        # Redis: no message lost between its pop and its record, nor to an unreadable envelope.
        **({"broker_transport": _redis_transport(settings)} if settings.broker_is_redis else {}),
        "broker_transport_options": transport_options(settings, visibility_timeout),
        "broker_connection_retry_on_startup": True,
        # A worker's remote-control queue is not exclusive to one connection: after a silent
        # partition the worker reconnects while RabbitMQ still holds the old connection, and an
        # exclusive queue stopped it with RESOURCE_LOCKED. With classic queues it is durable
        # rather than transient (which RabbitMQ 4 deprecates for non-exclusive queues); it
        # expires once no worker uses it (``control_queue_expires``, Celery's 10 s). On a
        # cluster with quorum queues it is transient: a durable classic queue whose node is
        # down cannot be declared anywhere (404 "home node ... is down") until that node is
        # back, and the worker's consumer would not start again; a transient one goes with its
        # node and is declared again on a surviving one.
        "control_queue_exclusive": False,
        "control_queue_durable": not QueueOptions.of(settings).quorum,
        "result_backend": settings.result_backend,
        # Redis behind Sentinel: the master's name and the Sentinels' password.
        **(
            {"result_backend_transport_options": sentinel_options(settings)}
            if settings.result_backend and is_sentinel_url(settings.result_backend)
            else {}
        ),
        "result_expires": settings.result_expires,
        "result_backend_always_retry": True,
        **JSON_ONLY,
        "timezone": settings.timezone,
        "enable_utc": True,
    }


def _redis_transport(settings: Settings) -> str:
    broker = settings.require_broker()
    return SENTINEL_TRANSPORT if is_sentinel_url(broker) else REDIS_TRANSPORT
