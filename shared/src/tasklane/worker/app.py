"""The worker's Celery app: TasklaneApp, create_app and the worker settings on top of the base
configuration every process shares (:mod:`tasklane.wire.config`)."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery, signals
from pydantic import BaseModel

from tasklane.contracts import REGISTRY, ContractRegistry, TaskContract
from tasklane.contracts.ping import PingPayload, PingResult, is_ping, pong
from tasklane.errors import SettingsError
from tasklane.observability.health import WorkerHealth
from tasklane.observability.logs import install_logging
from tasklane.observability.metrics import TaskRecorder, install_metrics
from tasklane.observability.runs import RunObservers
from tasklane.observability.tracing import install_tracing
from tasklane.settings import Settings, load_settings
from tasklane.wire.config import base_config
from tasklane.wire.results import RESULT_BACKENDS
from tasklane.wire.routing import (
    QueueOptions,
    dead_letter_queues,
    queue_name,
    queues_for_service,
    task_routes,
)
from tasklane.worker.consumer import DeclareDeadLetterQueues
from tasklane.worker.shutdown import ShutdownDeadline
from tasklane.worker.task import ContractTask

logger = logging.getLogger(__name__)

PayloadT = TypeVar("PayloadT", bound=BaseModel)
ResultT = TypeVar("ResultT", bound=BaseModel)

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
    """The complete Celery configuration of one worker service: the shared base and its own."""
    contracts = registry.for_service(service)
    queues = queues_for_service(registry, service, settings.namespace, QueueOptions.of(settings))
    if settings.result_backend is None:
        raise SettingsError(
            "no result backend: set TASKLANE_RESULT_BACKEND (required when the broker is not Redis)"
        )
    return {
        **base_config(settings, visibility_timeout=visibility_timeout(settings, contracts)),
        "broker_connection_max_retries": None,
        "result_extended": True,
        # A message is acknowledged only once its task finished; a killed worker's task comes back.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": settings.prefetch_multiplier,
        # RabbitMQ hands a lost connection's unacknowledged messages out again at once, so a task
        # still running would run twice side by side: cancel it. Redis keeps them until the
        # visibility timeout: let the task finish and record its idempotency key, so that the
        # redelivery deduplicates instead of being cut off right after its side effect.
        "worker_cancel_long_running_tasks_on_connection_loss": not settings.broker_is_redis,
        # SIGTERM stays Celery's warm shutdown; ShutdownDeadline bounds it and then starts the
        # cold shutdown, which must not wait again: Celery's own soft wait sleeps its full
        # timeout even after the tasks ended.
        "worker_soft_shutdown_timeout": 0.0,
        "worker_enable_soft_shutdown_on_idle": False,
        "worker_concurrency": settings.worker_concurrency,
        "worker_consumer": "tasklane.worker.consumer:DeadLetteringConsumer",
        "task_queues": queues,
        "task_default_queue": queues[0].name,
        "task_routes": task_routes(registry, settings.namespace),
        # Off by default: a second result write per task cost ~25% of no-op throughput (bench/).
        "task_track_started": settings.track_started,
        "task_send_sent_event": settings.task_events,
        "worker_send_task_events": settings.task_events,
    }


class TasklaneApp(Celery):  # type: ignore[misc]
    """The Celery app of one worker service, with Tasklane's state as typed attributes.

    Services implement contracts with :meth:`implement` as Celery users write ``@app.task``.
    """

    def __init__(
        self, service: str, *, settings: Settings, registry: ContractRegistry = REGISTRY
    ) -> None:
        super().__init__(service, set_as_current=False)
        # Its Redis results are stored in one round trip (the backend its URL names, by scheme).
        self.loader.override_backends = RESULT_BACKENDS
        self.service = service
        self.settings = settings
        self.registry = registry
        #: The contracts this service implements, ping contracts included.
        self.contracts = registry.for_service(service)
        self.soft_shutdown_timeout = soft_shutdown_timeout(settings, self.contracts)
        #: How this service's queues are declared on RabbitMQ (quorum or classic).
        self.queue_options = QueueOptions.of(settings)
        #: The DLQs declared at start-up (tasklane.worker.consumer.DeclareDeadLetterQueues).
        self.dead_letter_queues = [
            q.name for q in dead_letter_queues(self.contracts, settings.namespace)
        ]
        #: Set when TASKLANE_METRICS_PORT is: the probes' state and the metrics recorder.
        self.health: WorkerHealth | None = None
        self.metrics: TaskRecorder | None = None
        #: What each task run records (metrics, its span), from one pair of run signals.
        self.run_observers = RunObservers()

    def implement(
        self,
        contract: TaskContract[PayloadT, ResultT],
        *,
        on_dead_letter: Callable[[PayloadT, Exception], None] | None = None,
    ) -> Callable[[Callable[[PayloadT], ResultT]], ContractTask]:
        """Register the decorated function as the implementation of ``contract``.

        The task takes its limits, rate limit, priority and queue from the contract; the function
        receives the validated payload model and returns the result model. ``on_dead_letter`` is
        called with the payload after a final failure was dead-lettered (not for invalid payloads).
        """

        def register(function: Callable[[PayloadT], ResultT]) -> ContractTask:
            def run(self: ContractTask, *args: Any, **kwargs: Any) -> Any:
                return self.execute(args, kwargs)

            run.__name__ = function.__name__
            run.__doc__ = function.__doc__
            task: ContractTask = self.task(
                name=contract.name,
                base=ContractTask,
                bind=True,
                # This app's alone: a shared task would be added to every app made later.
                shared=False,
                contract=contract,
                implementation=staticmethod(function),
                dead_letter_hook=staticmethod(on_dead_letter) if on_dead_letter else None,
                queue=queue_name(contract, self.settings.namespace),
                soft_time_limit=contract.soft_time_limit,
                time_limit=contract.time_limit,
                rate_limit=contract.rate_limit,
                max_retries=contract.retry.max_retries,
                priority=contract.priority,
            )(run)
            return task

        return register


def create_app(
    service: str,
    *,
    settings: Settings | None = None,
    registry: ContractRegistry = REGISTRY,
) -> TasklaneApp:
    """Build the Celery app of one worker service with production defaults.

    The service's ``<queue>.ping`` tasks are registered here. Metrics are installed when
    ``TASKLANE_METRICS_PORT`` is set, traces when the ``OTEL_*`` variables turn them on
    (:mod:`tasklane.observability.tracing`).

    Args:
        service: the service name, the first segment of its contracts' names (``notifier``).
        settings: platform settings; read from the environment when omitted.
        registry: the contracts; the service consumes exactly the queues of its own.

    Raises:
        SettingsError: the settings are missing or inconsistent.
    """
    settings = settings or load_settings()
    app = TasklaneApp(service, settings=settings, registry=registry)
    app.conf.update(celery_config(service, settings, registry))
    app.steps["consumer"].add(DeclareDeadLetterQueues)
    app.steps["worker"].add(ShutdownDeadline)
    for contract in app.contracts:
        if is_ping(contract):
            app.implement(contract)(_answer_ping(contract))
    if settings.metrics_port is not None:
        app.health, app.metrics = install_metrics(
            app,
            service,
            app.contracts,
            settings.namespace,
            settings.metrics_port,
            settings.liveness_timeout,
            app.run_observers,
            settings.metrics_address,
        )
    install_tracing(service, app.run_observers)
    install_logging(settings.log_format, log_task_data=settings.log_task_data)
    # Connected last, so that what the other handlers start in the process is frozen too.
    signals.worker_process_init.connect(freeze_heap, weak=False, dispatch_uid=freeze_heap)
    return app


def freeze_heap(**_: Any) -> None:
    """Keep what a pool process holds once it started out of the garbage collector's full passes.

    The modules, app and telemetry a pool child inherits or builds at start live as long as it
    does; scanning them on every full collection costs each task CPU, and touches (so copies)
    pages the child otherwise shares with the main process. Python's documented remedy for
    forked processes (``gc.freeze``).
    """
    gc.freeze()


def _answer_ping(
    contract: TaskContract[PingPayload, PingResult],
) -> Callable[[PingPayload], PingResult]:
    def ping(payload: PingPayload) -> PingResult:
        """No-op for smoke tests (``helm test``): never retried, no idempotency key."""
        return pong(contract)

    return ping
