"""The ``TASKLANE`` Django setting, read once and validated: platform settings and Django-only keys.

Keys are case-insensitive: every :class:`tasklane.settings.Settings` field by its environment name
without the ``TASKLANE_`` prefix (``BROKER_URL``, ``NAMESPACE``, ...), which wins over the
environment, and the fields of :class:`DjangoOptions` (``OUTBOX``, ``RELAY_BATCH_SIZE``, ...).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import SettingsError as SourceError

from tasklane.contracts import ContractRegistry
from tasklane.settings import Settings, env_names

#: The Django setting this module reads.
SETTING = "TASKLANE"

_ENV_PREFIX = "TASKLANE_"


class _DjangoKeys(BaseModel):
    """The Django-only keys of ``TASKLANE``, as given (validated, defaults filled)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    outbox: bool = False
    outbox_database: str = Field(default="default", min_length=1)
    outbox_retention: int = Field(default=7 * 86_400, ge=1)
    relay_batch_size: int = Field(default=500, ge=1, le=10_000)
    relay_poll_interval: float = Field(default=1.0, gt=0)
    relay_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    registry: str = Field(default="tasklane.contracts:REGISTRY", pattern=r"^[\w.]+:\w+$")
    contracts: tuple[str, ...] = ()


@dataclass(frozen=True)
class DjangoOptions:
    """Everything Tasklane's Django integration is configured with.

    Attributes:
        settings: the platform settings: ``TASKLANE`` keys over ``TASKLANE_*`` variables.
        registry: the contracts this project knows (``REGISTRY``).
        outbox: ``publish_on_commit`` writes outbox rows instead of sending after commit.
        outbox_database: the database alias holding the outbox table.
        outbox_retention: seconds a sent row is kept before the relay prunes it.
        relay_batch_size: rows the relay claims and sends at once.
        relay_poll_interval: seconds between the relay's polls when no NOTIFY wakes it.
        relay_metrics_port: where the relay serves metrics; ``Settings.metrics_port`` if unset.
        contracts: names of the contracts this project publishes (checked against the registry).
    """

    settings: Settings
    registry: ContractRegistry
    outbox: bool
    outbox_database: str
    outbox_retention: int
    relay_batch_size: int
    relay_poll_interval: float
    relay_metrics_port: int | None
    contracts: tuple[str, ...]


def _settings_keys() -> dict[str, str]:
    """``Settings`` field by key: its environment name without the prefix (``BROKER_URL``)."""
    return {
        env_names(Settings, field)[0].removeprefix(_ENV_PREFIX): field
        for field in Settings.model_fields
    }


@functools.cache
def options() -> DjangoOptions:
    """The validated ``TASKLANE`` setting; cached until Django's ``setting_changed`` for it.

    Raises:
        ImproperlyConfigured: a key is unknown or its value invalid; the message names the key.
    """
    given = getattr(django_settings, SETTING, {})
    if not isinstance(given, Mapping):
        raise ImproperlyConfigured(f"{SETTING} must be a dict, not {type(given).__name__}")
    platform_keys = _settings_keys()
    django_keys = {name.upper(): name for name in _DjangoKeys.model_fields}
    overrides: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for raw_key, value in given.items():
        key = str(raw_key).upper()
        if key in platform_keys:
            overrides[platform_keys[key]] = value
        elif key in django_keys:
            own[django_keys[key]] = value
        else:
            raise ImproperlyConfigured(f"{_label(key)}: unknown key")
    platform = _platform_settings(overrides)
    keys = _django_keys(own)
    if keys.outbox_database not in django_settings.DATABASES:
        raise ImproperlyConfigured(
            f"{_label('OUTBOX_DATABASE')}: no database {keys.outbox_database!r} in DATABASES"
        )
    return DjangoOptions(
        settings=platform,
        registry=_registry(keys.registry),
        outbox=keys.outbox,
        outbox_database=keys.outbox_database,
        outbox_retention=keys.outbox_retention,
        relay_batch_size=keys.relay_batch_size,
        relay_poll_interval=keys.relay_poll_interval,
        relay_metrics_port=(
            keys.relay_metrics_port
            if keys.relay_metrics_port is not None
            else platform.metrics_port
        ),
        contracts=keys.contracts,
    )


def _label(key: str) -> str:
    return f'{SETTING}["{key}"]'


def _platform_settings(overrides: dict[str, Any]) -> Settings:
    """``Settings`` from ``overrides`` over the environment, errors naming the key or variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = [_problem(item["loc"], item["msg"], overrides) for item in exc.errors()]
    except SourceError as exc:  # an environment value that should be JSON is not
        problems = [f"environment: {' '.join(str(exc).split())}"]
    raise ImproperlyConfigured(f"invalid {SETTING} setting: " + "; ".join(problems)) from None


def _problem(loc: tuple[int | str, ...], message: str, overrides: Mapping[str, Any]) -> str:
    expected = _expected(message)
    if not loc:  # a check of the settings as a whole
        return expected
    field = str(loc[0])
    if field not in Settings.model_fields:  # an alias (REDIS_URL): the field that reads it
        field = next(
            (name for name in Settings.model_fields if field.upper() in env_names(Settings, name)),
            field,
        )
    if field in overrides:
        key = env_names(Settings, field)[0].removeprefix(_ENV_PREFIX)
        return f"{_label(key)}: {expected}"
    # Values are not repeated: a broker URL may hold a password.
    variable = env_names(Settings, field)[0] if field in Settings.model_fields else field
    return f"{variable} (environment): {expected}"


def _expected(message: str) -> str:
    """Pydantic's message as what the value should be, on one line (as ``tasklane.settings``)."""
    message = message.removeprefix("Value error, ")
    if message.startswith("Input should"):
        message = message.removeprefix("Input ")
    return " ".join(message.split())


def _django_keys(own: dict[str, Any]) -> _DjangoKeys:
    try:
        return _DjangoKeys(**own)
    except ValidationError as exc:
        problems = [
            f"{_label(str(item['loc'][0]).upper())}: {_expected(item['msg'])}"
            if item["loc"]
            else _expected(item["msg"])
            for item in exc.errors()
        ]
    raise ImproperlyConfigured(f"invalid {SETTING} setting: " + "; ".join(problems)) from None


def _registry(path: str) -> ContractRegistry:
    """The ``ContractRegistry`` at ``"module:NAME"``."""
    module_name, _, name = path.partition(":")
    try:
        registry = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ImproperlyConfigured(f"{_label('REGISTRY')}: cannot import {path!r}: {exc}") from None
    if not isinstance(registry, ContractRegistry):
        raise ImproperlyConfigured(
            f"{_label('REGISTRY')}: {path!r} is a {type(registry).__name__}, not a ContractRegistry"
        )
    return registry


def _forget(*, setting: str, **_: object) -> None:
    if setting in (SETTING, "DATABASES"):
        options.cache_clear()


setting_changed.connect(_forget, dispatch_uid="tasklane.contrib.django.conf")
