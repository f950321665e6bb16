"""The TASKLANE setting and Tasklane's system checks, on a real PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connections

from tasklane.contracts import REGISTRY
from tasklane.contrib.django.conf import options
from tasklane.contrib.django.publishing import publisher

pytestmark = pytest.mark.integration

BROKER = "redis://127.0.0.1:6379/9"


def tasklane_checks(databases: list[str] | None = None) -> list[checks.CheckMessage]:
    return [m for m in checks.run_checks(databases=databases) if m.id.startswith("tasklane.")]


def ids(messages: list[checks.CheckMessage]) -> list[str]:
    return sorted(m.id for m in messages)


def test_tasklane_keys_win_over_the_environment_and_are_case_insensitive(
    tasklane_setting: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKLANE_NAMESPACE", "from-env.")
    monkeypatch.setenv("TASKLANE_PUBLISH_TIMEOUT", "9")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/3")
    tasklane_setting(broker_url=BROKER, Namespace="from-django.")

    config = options()
    assert config.settings.broker_url == BROKER
    assert config.settings.namespace == "from-django."
    assert config.settings.publish_timeout == 9.0  # not in TASKLANE: the environment's
    assert config.registry is REGISTRY


def test_django_keys_have_their_defaults_and_the_metrics_port_falls_back(
    tasklane_setting: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKLANE_METRICS_PORT", "9200")
    tasklane_setting(BROKER_URL=BROKER)
    config = options()
    assert (config.outbox, config.outbox_database, config.outbox_retention) == (
        False,
        "default",
        604_800,
    )
    assert (config.relay_batch_size, config.relay_poll_interval) == (500, 1.0)
    assert config.relay_metrics_port == 9200  # Settings.metrics_port
    assert config.contracts == ()

    tasklane_setting(
        BROKER_URL=BROKER,
        OUTBOX=True,
        OUTBOX_DATABASE="sqlite",
        RELAY_METRICS_PORT=9300,
        RELAY_BATCH_SIZE=50,
        CONTRACTS=["notifier.email.send"],
    )
    config = options()
    assert (config.outbox, config.outbox_database) == (True, "sqlite")
    assert (config.relay_metrics_port, config.relay_batch_size) == (9300, 50)
    assert config.contracts == ("notifier.email.send",)


#: TASKLANE keys with a bad value, and what the error must say.
BAD_KEYS: list[tuple[dict[str, Any], str]] = [
    ({"PUBLISH_TIMEOUT": -1}, 'TASKLANE["PUBLISH_TIMEOUT"]: should be greater than 0'),
    ({"broker_url": "http://broker"}, 'TASKLANE["BROKER_URL"]: unsupported broker scheme'),
    ({"NAMESPACE": "Upper."}, 'TASKLANE["NAMESPACE"]'),
    ({"RELAY_BATCH_SIZE": 0}, 'TASKLANE["RELAY_BATCH_SIZE"]'),
    ({"OUTBOX": "perhaps"}, 'TASKLANE["OUTBOX"]'),
    ({"OUTBOX_DATABASE": "elsewhere"}, 'TASKLANE["OUTBOX_DATABASE"]: no database'),
    ({"REGISTRY": "tasklane.contracts:NOTHING"}, 'TASKLANE["REGISTRY"]: cannot import'),
    ({"REGISTRY": "tasklane.contracts:SEND_EMAIL"}, "not a ContractRegistry"),
    ({"BROKER": BROKER}, 'TASKLANE["BROKER"]: unknown key'),
]


@pytest.mark.parametrize(("keys", "named"), BAD_KEYS, ids=["-".join(keys) for keys, _ in BAD_KEYS])
def test_a_bad_value_raises_improperly_configured_naming_the_key(
    tasklane_setting: Callable[..., None], keys: dict[str, Any], named: str
) -> None:
    tasklane_setting(**keys)
    with pytest.raises(ImproperlyConfigured) as raised:
        options()
    assert named in str(raised.value)


def test_a_bad_environment_value_names_the_variable(
    tasklane_setting: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKLANE_PREFETCH_MULTIPLIER", "0")
    tasklane_setting(BROKER_URL=BROKER)
    with pytest.raises(ImproperlyConfigured, match="TASKLANE_PREFETCH_MULTIPLIER"):
        options()
    # A key in TASKLANE replaces the bad variable.
    tasklane_setting(BROKER_URL=BROKER, PREFETCH_MULTIPLIER=4)
    assert options().settings.prefetch_multiplier == 4


def test_options_and_the_publisher_are_made_again_when_the_setting_changes(
    tasklane_setting: Callable[..., None],
) -> None:
    tasklane_setting(BROKER_URL=BROKER, NAMESPACE="one.")
    first = publisher()
    assert publisher() is first and first.settings.namespace == "one."
    tasklane_setting(BROKER_URL=BROKER, NAMESPACE="two.")
    assert options().settings.namespace == "two."
    assert publisher() is not first and publisher().settings.namespace == "two."


# ------------------------------------------------------------------------------- system checks


def test_a_sound_configuration_passes_every_check(tasklane_setting: Callable[..., None]) -> None:
    tasklane_setting(BROKER_URL=BROKER, OUTBOX=True, CONTRACTS=["notifier.email.send"])
    assert tasklane_checks(databases=["default", "sqlite"]) == []


def test_e001_an_invalid_setting(tasklane_setting: Callable[..., None]) -> None:
    tasklane_setting(BROKER_URL=BROKER, RELAY_POLL_INTERVAL=0, OUTBOX=True)
    messages = tasklane_checks(databases=["default"])
    assert ids(messages) == ["tasklane.E001"]
    assert 'TASKLANE["RELAY_POLL_INTERVAL"]' in messages[0].msg


def test_e002_no_broker_url(tasklane_setting: Callable[..., None]) -> None:
    tasklane_setting(NAMESPACE="staging.")
    messages = tasklane_checks()
    assert ids(messages) == ["tasklane.E002"]
    assert "BROKER_URL" in (messages[0].hint or "")


def test_e003_the_outbox_table_missing_and_migrate_still_runs(
    tasklane_setting: Callable[..., None],
) -> None:
    tasklane_setting(BROKER_URL=BROKER, OUTBOX=True)
    call_command("migrate", "tasklane", "zero", database="default", verbosity=0)
    try:
        assert "tasklane_outbox" not in connections["default"].introspection.table_names()
        messages = tasklane_checks(databases=["default"])
        assert ids(messages) == ["tasklane.E003"]
        assert "manage.py migrate tasklane" in (messages[0].hint or "")
        # A database check: not run unless the database is asked for, nor for another one.
        assert tasklane_checks() == []
        assert tasklane_checks(databases=["sqlite"]) == []
        # The outbox off needs no table.
        tasklane_setting(BROKER_URL=BROKER)
        assert tasklane_checks(databases=["default"]) == []
        # migrate runs the database checks before it creates the table: E003 must not stop it.
        tasklane_setting(BROKER_URL=BROKER, OUTBOX=True)
        call_command("migrate", "tasklane", database="default", verbosity=0, skip_checks=False)
    finally:
        call_command("migrate", "tasklane", database="default", verbosity=0)
    assert tasklane_checks(databases=["default"]) == []


def test_e004_an_unknown_contract(tasklane_setting: Callable[..., None]) -> None:
    tasklane_setting(BROKER_URL=BROKER, CONTRACTS=["notifier.email.send", "notifier.fax.send"])
    messages = tasklane_checks()
    assert ids(messages) == ["tasklane.E004"]
    assert "'notifier.fax.send'" in messages[0].msg


def test_w001_the_outbox_on_sqlite(tasklane_setting: Callable[..., None]) -> None:
    tasklane_setting(BROKER_URL=BROKER, OUTBOX=True, OUTBOX_DATABASE="sqlite")
    messages = tasklane_checks(databases=["sqlite"])
    assert ids(messages) == ["tasklane.W001"]
    assert messages[0].level == checks.WARNING
    assert "one relay" in (messages[0].hint or "")
    # Only with the outbox on.
    tasklane_setting(BROKER_URL=BROKER, OUTBOX_DATABASE="sqlite")
    assert tasklane_checks(databases=["sqlite"]) == []
