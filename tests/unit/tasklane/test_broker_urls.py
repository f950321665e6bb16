"""Broker URLs that name several nodes: passwords never shown, and a publisher's next try goes
to the next node."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tasklane.settings import Settings
from tasklane.wire.broker import broker_urls, connect, redacted
from tasklane.wire.delayed import DELAY_EXCHANGE, delayed_route

NODES = "amqp://app:s3cret@rabbit-0:5672//;amqp://app:s3cret@rabbit-1:5672//;amqp://app:s3cret@rabbit-2:5672//"


def test_every_node_password_is_redacted() -> None:
    shown = redacted(NODES)
    assert "s3cret" not in shown
    assert shown.count("app:**@") == 3


def test_a_single_url_is_redacted_as_before() -> None:
    assert redacted("redis://:pw@cache:6379/0") == "redis://:**@cache:6379/0"


def test_each_reconnect_starts_at_the_next_node() -> None:
    settings = Settings(broker_url=NODES, result_backend="redis://127.0.0.1:6379/0")
    hosts = [
        connect(settings, socket_timeout=1.0, first_node=attempt).hostname for attempt in range(4)
    ]
    assert hosts == ["rabbit-0", "rabbit-1", "rabbit-2", "rabbit-0"]
    assert len(broker_urls(NODES)) == 3


def test_a_countdown_is_held_in_whole_seconds_rounded_up() -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    eta = (now + timedelta(seconds=2.2)).isoformat()
    exchange, key = delayed_route({"eta": eta}, "prod.notifier.email", now) or ("", "")
    assert exchange == DELAY_EXCHANGE == "celery_delayed_27"
    bits, _, queue = key.rpartition(".prod.")
    assert queue == "notifier.email"
    assert int(bits.replace(".", ""), 2) == 3


def test_a_message_due_within_the_second_goes_to_its_queue() -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    assert delayed_route({"eta": now.isoformat()}, "q", now) is None
    assert delayed_route({"eta": None}, "q", now) is None
    assert delayed_route({}, "q", now) is None


def test_sentinel_urls_configure_kombu_and_celery_for_the_named_master() -> None:
    from tasklane.wire.config import SENTINEL_TRANSPORT, base_config

    url = "sentinel://:pw@s-0:26379/0;sentinel://:pw@s-1:26379/0;sentinel://:pw@s-2:26379/0"
    settings = Settings(
        broker_url=url, redis_sentinel_master="tasklane", redis_sentinel_password="sentinel-pw"
    )
    assert settings.broker_is_redis and settings.result_backend == url
    config = base_config(settings)
    assert config["broker_transport"] == SENTINEL_TRANSPORT
    expected = {
        "master_name": "tasklane",
        "sentinel_kwargs": {"socket_timeout": 5.0, "password": "sentinel-pw"},
    }
    assert config["result_backend_transport_options"] == expected
    assert {k: config["broker_transport_options"][k] for k in expected} == expected
    assert "pw" not in redacted(url).replace("**", "")
