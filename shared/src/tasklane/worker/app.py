"""The hardened Celery app factory: every Celery setting the platform sets is set here."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from tasklane.contracts import REGISTRY, ContractRegistry, TaskContract
from tasklane.errors import SettingsError
from tasklane.observability.logs import install_logging
from tasklane.observability.metrics import install_metrics
from tasklane.observability.tracing import install_tracing
from tasklane.settings import Settings, load_settings
from tasklane.wire.broker import transport_options
from tasklane.wire.routing import dead_letter_queues, queues_for_service, task_routes
from tasklane.worker.consumer import DeclareDeadLetterQueues
from tasklane.worker.shutdown import ShutdownDeadline

logger = logging.getLogger(__name__)

#: Seconds added to the longest wait a message can be held unacknowledged.
VISIBILITY_MARGIN = 60.0


def longest_hold(contracts: tuple[TaskContract[Any, Any], ...]) -> float:
    """The longest a worker may hold one message unacknowledged.

    A retry is a new message with a countdown: the worker holds it for the countdown, then runs it
    for up to the hard time limit before acknowledging it.
    """
    return max(c.retry.backoff_max + c.time_limit for c in contracts)


def visibility_timeout(settings: Settings, contracts: tuple[TaskContract[Any, Any], ...]) -> float:
    """Redis visibility timeout: derived from the contracts, or the configured one if it is safe.

    Below the longest hard time limit Redis would hand a running task to a second worker: refused.
    Below the longest hold, a retry waiting out a long countdown may run twice: allowed with a
    warning, since idempotency keys cover that case.
    """
    hold = longest_hold(contracts)
    if settings.visibility_timeout is None:
        return hold + VISIBILITY_MARGIN
    longest = max(c.time_limit for c in contracts)
    if settings.visibility_timeout <= longest:
        raise SettingsError(
            f"TASKLANE_VISIBILITY_TIMEOUT={settings.visibility_timeout:g} must exceed the longest "
            f"hard time limit of the service's contracts ({longest:g}s)"
        )
    if settings.visibility_timeout <= hold:
        logger.warning(
            "TASKLANE_VISIBILITY_TIMEOUT=%g is below the longest retry countdown plus time limit "
            "(%gs): a retry waiting that long may be delivered twice",
            settings.visibility_timeout,
            hold,
        )
    return settings.visibility_timeout


def soft_shutdown_timeout(
    settings: Settings, contracts: tuple[TaskContract[Any, Any], ...]
) -> float:
    """Seconds a stopping worker lets its running tasks finish before it hands them back.

    Derived: the longest hard time limit, since by then every task has ended anyway.
    """
    if settings.soft_shutdown_timeout is not None:
        return settings.soft_shutdown_timeout
    return max(c.time_limit for c in contracts)


def celery_config(
    service: str, settings: Settings, registry: ContractRegistry = REGISTRY
) -> dict[str, Any]:
    """The complete Celery configuration of one worker service."""
    contracts = registry.for_service(service)
    queues = queues_for_service(registry, service, settings.namespace)
    if settings.result_backend is None:
        raise SettingsError(
            "no result backend: set TASKLANE_RESULT_BACKEND (required when the broker is not Redis)"
        )
    return {
        "broker_url": settings.require_broker(),
        "broker_transport_options": transport_options(
            settings, visibility_timeout(settings, contracts)
        ),
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "result_backend": settings.result_backend,
        "result_expires": settings.result_expires,
        "result_extended": True,
        "result_backend_always_retry": True,
        # JSON only: pickle (code execution on load) is refused everywhere.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # A message is acknowledged only once its task finished; a killed worker's task comes back.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": settings.prefetch_multiplier,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # SIGTERM stays Celery's warm shutdown; ShutdownDeadline bounds it and then starts the
        # cold shutdown, which must not wait again: Celery's own soft wait sleeps its full
        # timeout even after the tasks ended.
        "worker_soft_shutdown_timeout": 0.0,
        "worker_enable_soft_shutdown_on_idle": False,
        "tasklane_soft_shutdown_timeout": soft_shutdown_timeout(settings, contracts),
        "worker_concurrency": settings.worker_concurrency,
        "worker_consumer": "tasklane.worker.consumer:DeadLetteringConsumer",
        "task_queues": queues,
        "task_default_queue": queues[0].name,
        "task_routes": task_routes(registry, settings.namespace),
        # Off by default: a second result write per task cost ~25% of no-op throughput (bench/).
        "task_track_started": settings.track_started,
        "task_send_sent_event": settings.task_events,
        "worker_send_task_events": settings.task_events,
        "timezone": settings.timezone,
        "enable_utc": True,
        "tasklane_namespace": settings.namespace,
        "tasklane_dead_letter_queues": [
            q.name for q in dead_letter_queues(contracts, settings.namespace)
        ],
    }


def create_app(
    service: str,
    *,
    settings: Settings | None = None,
    registry: ContractRegistry = REGISTRY,
) -> Celery:
    """Build the Celery app of one worker service with production defaults.

    Metrics are installed when ``TASKLANE_METRICS_PORT`` is set, traces when the ``OTEL_*``
    variables turn them on (:mod:`tasklane.observability.tracing`).

    Args:
        service: the service name, the first segment of its contracts' names (``notifier``).
        settings: platform settings; read from the environment when omitted.
        registry: the contracts; the service consumes exactly the queues of its own.

    Raises:
        SettingsError: the settings are missing or inconsistent.
    """
    settings = settings or load_settings()
    app = Celery(service, set_as_current=False)
    app.conf.update(celery_config(service, settings, registry))
    app.conf.tasklane_settings = settings
    app.steps["consumer"].add(DeclareDeadLetterQueues)
    app.steps["worker"].add(ShutdownDeadline)
    if settings.metrics_port is not None:
        install_metrics(app, service, settings.metrics_port, settings.liveness_timeout)
    install_tracing(app, service)
    install_logging(settings.log_format)
    return app
