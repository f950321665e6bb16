from __future__ import annotations

import pytest

from tasklane.errors import SettingsError
from tasklane.settings import Settings, load_settings


def test_redis_broker_is_also_the_default_result_backend_and_state_store() -> None:
    settings = Settings(broker_url="redis://127.0.0.1:6379/3")
    assert settings.result_backend == "redis://127.0.0.1:6379/3"
    assert settings.state_url == "redis://127.0.0.1:6379/3"
    assert settings.broker_is_redis


def test_rabbitmq_broker_has_no_implicit_result_backend() -> None:
    settings = Settings(broker_url="amqp://guest:guest@127.0.0.1:5672//")
    assert settings.result_backend is None
    with pytest.raises(SettingsError, match="TASKLANE_RESULT_BACKEND"):
        settings.require_state()


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKLANE_BROKER_URL", "redis://h:1/0")
    monkeypatch.setenv("TASKLANE_PREFETCH_MULTIPLIER", "4")
    monkeypatch.setenv("TASKLANE_TIMEZONE", "Europe/Berlin")
    settings = load_settings()
    assert (settings.broker_url, settings.prefetch_multiplier, settings.timezone) == (
        "redis://h:1/0",
        4,
        "Europe/Berlin",
    )


def test_redis_url_is_a_fallback_for_the_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://fallback:6379/0")
    assert load_settings().broker_url == "redis://fallback:6379/0"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TASKLANE_BROKER_URL", "mysql://db/1", "TASKLANE_BROKER_URL: .*unsupported broker scheme"),
        ("TASKLANE_RESULT_BACKEND", "amqp://x//", "TASKLANE_RESULT_BACKEND: .*redis://"),
        ("TASKLANE_TIMEZONE", "Mars/Olympus", "TASKLANE_TIMEZONE: .*unknown time zone"),
        ("TASKLANE_PREFETCH_MULTIPLIER", "0", "TASKLANE_PREFETCH_MULTIPLIER"),
        ("TASKLANE_NAMESPACE", "Bad Name", "TASKLANE_NAMESPACE"),
    ],
)
def test_bad_values_get_an_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message):
        load_settings()


def test_missing_broker_says_which_variable_to_set() -> None:
    with pytest.raises(SettingsError, match="TASKLANE_BROKER_URL"):
        Settings().require_broker()


def test_soft_shutdown_timeout_is_derived_unless_set_and_never_negative(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().soft_shutdown_timeout is None  # the app factory derives it
    monkeypatch.setenv("TASKLANE_SOFT_SHUTDOWN_TIMEOUT", "12.5")
    assert load_settings().soft_shutdown_timeout == 12.5
    monkeypatch.setenv("TASKLANE_SOFT_SHUTDOWN_TIMEOUT", "-1")
    with pytest.raises(SettingsError, match="TASKLANE_SOFT_SHUTDOWN_TIMEOUT"):
        load_settings()


@pytest.mark.parametrize("namespace", ["", "staging.", "eu.staging.", "eu-west-1.prod.", "t1."])
def test_a_namespace_is_empty_or_lowercase_words_each_ending_in_a_dot(namespace: str) -> None:
    assert Settings(namespace=namespace).namespace == namespace


@pytest.mark.parametrize(
    "namespace",
    ["Prod", "Prod.", "staging", "eu.staging", ".staging.", "eu..", "-x.", "staging.\n"],
)
def test_a_namespace_error_quotes_the_value_given_and_no_other(
    monkeypatch: pytest.MonkeyPatch, namespace: str
) -> None:
    monkeypatch.setenv("TASKLANE_NAMESPACE", namespace)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert "TASKLANE_NAMESPACE: must be empty or lowercase words" in message
    assert f"(got {namespace!r})" in message
    # The only quoted text is the value given: an example in quotes reads like the input.
    assert message.count("'") == repr(namespace).count("'")


def test_without_a_broker_the_state_store_asks_for_the_broker_first() -> None:
    with pytest.raises(SettingsError, match=r"no broker configured: set TASKLANE_BROKER_URL"):
        Settings().require_state()
