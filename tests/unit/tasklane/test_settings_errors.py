"""A bad setting is reported in one line naming its variable, its value (never a secret's) and
what is expected; under ``celery -A`` that line ends the process with exit status 2."""

from __future__ import annotations

import importlib
from typing import Any, Literal, get_args, get_origin

import click
import pytest
from celery.bin.celery import celery as celery_command
from pydantic_settings import BaseSettings

from media.settings import MediaSettings
from notifier.settings import NotifierSettings
from scraper.settings import ScraperSettings
from tasklane.beat.scheduler import BeatSettings
from tasklane.cli.errors import EXIT_USAGE
from tasklane.errors import SettingsError
from tasklane.observability.flower import FlowerSettings
from tasklane.settings import (
    EXIT_BAD_SETTINGS,
    Settings,
    env_names,
    exit_on_bad_settings,
    is_secret,
    load,
    load_settings,
    running_celery_command,
)

SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (
    Settings,
    FlowerSettings,
    BeatSettings,
    NotifierSettings,
    ScraperSettings,
    MediaSettings,
)
#: Where settings classes live; every one found there must be in SETTINGS_CLASSES.
SETTINGS_MODULES = (
    "tasklane.settings",
    "tasklane.observability.flower",
    "tasklane.beat.scheduler",
    "notifier.settings",
    "scraper.settings",
    "media.settings",
)

#: Bad values of fields whose type alone does not give one (strings with a validator).
BAD_VALUES: dict[tuple[type[BaseSettings], str], str] = {
    (Settings, "broker_url"): "mysql://db/1",
    (Settings, "result_backend"): "amqp://guest@rabbit//",
    (Settings, "state_url"): "memcached://cache",
    (Settings, "namespace"): "Bad Name",
    (Settings, "timezone"): "Mars/Olympus",
    (Settings, "metrics_address"): "every-interface",
    (Settings, "redis_sentinel_master"): "",
    (FlowerSettings, "basic_auth"): "admin:short-pw",
    (FlowerSettings, "url_prefix"): "no spaces here",
    (NotifierSettings, "templates_dir"): "/nonexistent/templates",
    (NotifierSettings, "webhook_allow"): "10.0.0.0/8,*",
    (NotifierSettings, "message_id_domain"): "not a domain!",
    (ScraperSettings, "user_agent"): "ab",
    (ScraperSettings, "allow"): "10.0.0.1/8",
    (MediaSettings, "allow"): "intranet,bad host!",
}
#: Fields that take any string: no value is invalid.
ANY_VALUE = {
    (Settings, "artifacts_url"),  # checked where artifacts are stored (require_artifacts)
    (Settings, "redis_sentinel_password"),
    (FlowerSettings, "address"),
    (BeatSettings, "schedule_file"),  # a missing file is reported by Beat when it reads it
    (NotifierSettings, "smtp_host"),
    (NotifierSettings, "smtp_username"),
    (NotifierSettings, "smtp_password"),
    (NotifierSettings, "default_sender"),
    (MediaSettings, "work_dir"),
}


def _types(annotation: Any) -> set[Any]:
    found = {annotation, get_origin(annotation)}
    for arg in get_args(annotation):
        found |= _types(arg)
    return found


def bad_value(cls: type[BaseSettings], field: str) -> str | None:
    """A value of ``field`` that must be refused, or None if every value is valid."""
    if (cls, field) in BAD_VALUES:
        return BAD_VALUES[cls, field]
    if (cls, field) in ANY_VALUE:
        return None
    types = _types(cls.model_fields[field].annotation)
    if bool in types:
        return "maybe"
    if int in types or float in types:
        return "many"
    if Literal in types:
        return "no-such-choice"
    if dict in types:
        return '{"unquoted": value}'
    raise AssertionError(f"{cls.__name__}.{field}: add a bad value to BAD_VALUES or ANY_VALUE")


def every_field() -> list[tuple[type[BaseSettings], str]]:
    return [(cls, field) for cls in SETTINGS_CLASSES for field in cls.model_fields]


def test_every_settings_class_of_the_platform_and_services_is_checked() -> None:
    found = set()
    for module in map(importlib.import_module, SETTINGS_MODULES):
        found |= {
            value
            for value in vars(module).values()
            if isinstance(value, type)
            and issubclass(value, BaseSettings)
            and value.__module__ == module.__name__
        }
    assert found == set(SETTINGS_CLASSES)


@pytest.mark.parametrize(
    ("cls", "field"), every_field(), ids=[f"{c.__name__}.{f}" for c, f in every_field()]
)
def test_a_bad_value_of_every_field_names_its_variable_in_one_line(
    monkeypatch: pytest.MonkeyPatch, cls: type[BaseSettings], field: str
) -> None:
    value = bad_value(cls, field)
    if value is None:
        return  # any value is valid
    variable = env_names(cls, field)[0]
    assert variable.startswith("TASKLANE_")
    monkeypatch.setenv(variable, value)
    if cls is FlowerSettings and field != "basic_auth":
        monkeypatch.setenv("TASKLANE_FLOWER_BASIC_AUTH", "admin:a-long-enough-password")

    with pytest.raises(SettingsError) as raised:
        load(cls)

    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"invalid settings: {variable}: ")
    if is_secret(cls, field):
        assert value not in message
        assert message.endswith("(secret value not shown)")
    else:
        assert message.endswith(f"(got {value!r})")


def test_the_variable_is_the_alias_that_holds_the_bad_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "mysql://db/1")
    with pytest.raises(SettingsError, match=r"^invalid settings: REDIS_URL: unsupported broker"):
        load_settings()
    monkeypatch.setenv("TASKLANE_BROKER_URL", "mysql://db/2")
    with pytest.raises(SettingsError, match=r"^invalid settings: TASKLANE_BROKER_URL: .*db/2"):
        load_settings()


def test_secrets_are_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKLANE_NOTIFIER_SECRETS", '{"deploy-hook": 271828182845}')
    with pytest.raises(SettingsError) as raised:
        load(NotifierSettings)
    message = str(raised.value)
    assert "271828182845" not in message
    assert message == (
        "invalid settings: TASKLANE_NOTIFIER_SECRETS: deploy-hook: should be a valid string "
        "(secret value not shown)"
    )


def test_passwords_in_urls_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKLANE_BROKER_URL", "mysql://app:hunter2@db:3306/1")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "hunter2" not in str(raised.value)
    assert "(got 'mysql://app:***@db:3306/1')" in str(raised.value)


def test_values_stay_on_one_line_and_long_ones_are_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKLANE_NAMESPACE", "first\nsecond" + "x" * 200)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert "\n" not in message
    assert "(got 'first\\nsecond" in message
    assert len(message) < 250


def test_several_bad_values_share_the_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKLANE_PREFETCH_MULTIPLIER", "0")
    monkeypatch.setenv("TASKLANE_LOG_FORMAT", "xml")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == (
        "invalid settings: TASKLANE_PREFETCH_MULTIPLIER: should be greater than or equal to 1 "
        "(got '0'); TASKLANE_LOG_FORMAT: should be 'auto', 'json' or 'text' (got 'xml')"
    )


def test_a_bad_argument_is_named_by_its_variable_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKLANE_RESULT_EXPIRES", "3600")  # valid, and not what was used
    with pytest.raises(SettingsError, match=r"TASKLANE_RESULT_EXPIRES: .* \(got '5'\)$"):
        load_settings(result_expires=5)


def test_an_unset_required_value_says_so() -> None:
    with pytest.raises(
        SettingsError, match=r"TASKLANE_FLOWER_BASIC_AUTH: required: .*\(not set\)$"
    ):
        load(FlowerSettings)


def test_outside_celery_the_boundary_lets_the_settings_error_through() -> None:
    assert not running_celery_command()
    with pytest.raises(SettingsError, match="TASKLANE_X"), exit_on_bad_settings():
        raise SettingsError("TASKLANE_X is wrong")


def test_under_celery_the_boundary_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with (
        click.Context(celery_command, info_name="celery"),
        click.Context(click.Command("worker"), parent=click.get_current_context()),
    ):
        assert running_celery_command()
        with pytest.raises(SystemExit) as raised, exit_on_bad_settings():
            raise SettingsError("invalid settings: TASKLANE_X: should be\n  a number (got 'y')")
    assert raised.value.code == EXIT_BAD_SETTINGS == EXIT_USAGE == 2
    err = capsys.readouterr().err
    assert err == "error: invalid settings: TASKLANE_X: should be a number (got 'y')\n"
