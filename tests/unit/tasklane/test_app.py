from __future__ import annotations

import pytest

from tasklane.contracts import REGISTRY
from tasklane.errors import SettingsError
from tasklane.settings import Settings
from tasklane.worker.app import create_app, visibility_timeout
from tasklane.worker.shutdown import ShutdownDeadline

REDIS = "redis://127.0.0.1:6379/9"


def test_factory_sets_the_production_defaults() -> None:
    app = create_app("notifier", settings=Settings(broker_url=REDIS, prefetch_multiplier=2))
    conf = app.conf
    assert conf.accept_content == ["json"]
    assert conf.result_accept_content == ["json"]
    assert (conf.task_serializer, conf.result_serializer) == ("json", "json")
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 2
    assert conf.broker_connection_retry_on_startup
    # Task events are off unless asked for (Flower enables them at run time by remote control).
    assert not conf.worker_send_task_events and not conf.task_send_sent_event
    events = create_app("notifier", settings=Settings(broker_url=REDIS, task_events=True)).conf
    assert events.worker_send_task_events and events.task_send_sent_event
    assert conf.result_expires == 86_400
    assert conf.timezone == "UTC" and conf.enable_utc
    assert [q.name for q in conf.task_queues] == ["notifier.email", "notifier.im"]
    assert conf.worker_consumer == "tasklane.worker.consumer:DeadLetteringConsumer"


def test_visibility_timeout_exceeds_every_time_limit_and_retry_countdown() -> None:
    contracts = REGISTRY.for_service("notifier")
    derived = visibility_timeout(Settings(broker_url=REDIS), contracts)
    assert derived > max(c.time_limit + c.retry.backoff_max for c in contracts)
    app = create_app("notifier", settings=Settings(broker_url=REDIS))
    assert app.conf.broker_transport_options["visibility_timeout"] == derived


def test_visibility_timeout_below_a_time_limit_is_refused() -> None:
    with pytest.raises(SettingsError, match="must exceed the longest hard time limit"):
        create_app("notifier", settings=Settings(broker_url=REDIS, visibility_timeout=10))


def test_timezone_is_configurable() -> None:
    app = create_app("notifier", settings=Settings(broker_url=REDIS, timezone="Asia/Shanghai"))
    assert app.conf.timezone == "Asia/Shanghai"


def test_rabbitmq_needs_a_result_backend() -> None:
    with pytest.raises(SettingsError, match="TASKLANE_RESULT_BACKEND"):
        create_app("notifier", settings=Settings(broker_url="amqp://guest:guest@127.0.0.1//"))


def test_visibility_timeout_below_a_retry_hold_is_allowed_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    contracts = REGISTRY.for_service("notifier")
    settings = Settings(broker_url=REDIS, visibility_timeout=100)
    assert visibility_timeout(settings, contracts) == 100
    assert "may be delivered twice" in caplog.text


def test_started_state_is_opt_in() -> None:
    assert not create_app("notifier", settings=Settings(broker_url=REDIS)).conf.task_track_started
    tracked = create_app("notifier", settings=Settings(broker_url=REDIS, track_started=True))
    assert tracked.conf.task_track_started


def test_soft_shutdown_timeout_defaults_to_the_longest_hard_time_limit() -> None:
    longest = max(c.time_limit for c in REGISTRY.for_service("notifier"))
    app = create_app("notifier", settings=Settings(broker_url=REDIS))
    conf = app.conf
    assert app.soft_shutdown_timeout == longest
    # The warm phase is Tasklane's; Celery's own soft wait would only delay the hand-back.
    assert conf.worker_soft_shutdown_timeout == 0.0
    assert not conf.worker_enable_soft_shutdown_on_idle


@pytest.mark.parametrize("seconds", [0.0, 7.5, 600.0])
def test_soft_shutdown_timeout_can_be_set(seconds: float) -> None:
    settings = Settings(broker_url=REDIS, soft_shutdown_timeout=seconds)
    app = create_app("notifier", settings=settings)
    assert app.soft_shutdown_timeout == seconds
    assert ShutdownDeadline in app.steps["worker"]


def test_workers_beat_flower_and_the_result_reader_share_one_base_configuration() -> None:
    from tasklane.beat.scheduler import create_beat_app
    from tasklane.observability.flower import create_flower_app
    from tasklane.publish import ResultReader
    from tasklane.wire.config import JSON_ONLY

    settings = Settings(broker_url=REDIS, timezone="Europe/Berlin")
    reader = ResultReader(settings)
    confs = {
        "worker": create_app("notifier", settings=settings).conf,
        "beat": create_beat_app(settings).conf,
        "flower": create_flower_app(settings).conf,
        "result reader": reader.result("some-id").app.conf,
    }
    for name, conf in confs.items():
        for key, value in JSON_ONLY.items():
            assert conf[key] == value, (name, key)
        assert (conf.broker_url, conf.result_backend) == (REDIS, REDIS), name
        assert (conf.timezone, conf.enable_utc) == ("Europe/Berlin", True), name
    reader.close()


def test_create_app_answers_the_pings_of_its_own_queues_only() -> None:
    app = create_app("notifier", settings=Settings(broker_url=REDIS))
    pings = sorted(name for name in app.tasks if name.endswith(".ping"))
    assert pings == ["notifier.email.ping", "notifier.im.ping"]
    # Run in this process (Celery's eager apply): the ping's own implementation answers.
    answer = app.tasks["notifier.im.ping"].apply(kwargs={}).get()
    assert answer == {"pong": True, "queue": "notifier.im"}


@pytest.mark.parametrize(
    ("url", "backend"),
    [
        (REDIS, "RedisResults"),
        ("rediss://127.0.0.1:6380/9?ssl_cert_reqs=required", "RedisResults"),
        ("sentinel://127.0.0.1:26379/9;sentinel://127.0.0.1:26380/9", "SentinelResults"),
    ],
)
def test_a_worker_stores_its_redis_results_in_one_trip(url: str, backend: str) -> None:
    # Made without a connection: the backend is chosen from the URL's scheme alone.
    app = create_app("notifier", settings=Settings(broker_url=REDIS, result_backend=url))
    assert type(app.backend).__name__ == backend
    assert type(app.backend).__module__ == "tasklane.wire.results"
    assert app.conf.result_backend == url
