"""Typed settings read from ``TASKLANE_*`` environment variables."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, get_args
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AliasChoices,
    Field,
    IPvAnyAddress,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasklane.errors import SettingsError

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_settings import SettingsError as SourceError

BROKER_SCHEMES = frozenset({"redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp"})
#: Redis, and Redis behind Sentinel: ``sentinel://host:26379/0;sentinel://host2:26379/0``.
REDIS_SCHEMES = frozenset({"redis", "rediss", "sentinel"})
SENTINEL_SCHEME = "sentinel"
#: One rule for ``TASKLANE_NAMESPACE`` everywhere (the chart's values schema repeats it): empty,
#: or words of a-z, 0-9 and ``-``, each ending in a dot.
NAMESPACE_PATTERN = r"([a-z0-9][a-z0-9\-]*\.)*"
_NAMESPACE = re.compile(NAMESPACE_PATTERN)


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.lower()


def is_redis_url(url: str | None) -> bool:
    """Whether ``url`` points at Redis or Valkey (Sentinel-managed included)."""
    return url is not None and _scheme(url) in REDIS_SCHEMES


def is_sentinel_url(url: str | None) -> bool:
    """Whether ``url`` names Redis Sentinels rather than a Redis server."""
    return url is not None and _scheme(url) == SENTINEL_SCHEME


def known_timezone(value: str) -> str:
    """``value`` if it names an IANA time zone, else a ``ValueError`` saying so."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


#: A string field that must name an IANA time zone (``Europe/Berlin``, ``UTC``).
TimeZoneName = Annotated[str, AfterValidator(known_timezone)]


def checked_by(check: Callable[[str], object]) -> AfterValidator:
    """A field validator running ``check``, whose :class:`SettingsError` becomes the field's error.

    For settings checked by a parser of their own: ``Annotated[str, checked_by(parse)]``.
    """

    def validate(value: str) -> str:
        try:
            check(value)
        except SettingsError as exc:
            raise ValueError(str(exc)) from None
        return value

    return AfterValidator(validate)


class Settings(BaseSettings):
    """Platform settings shared by every service, the publisher and the CLI.

    Each field reads ``TASKLANE_<FIELD>``; the broker also falls back to ``REDIS_URL``.
    """

    model_config = SettingsConfigDict(env_prefix="TASKLANE_", extra="ignore", frozen=True)

    broker_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TASKLANE_BROKER_URL", "REDIS_URL", "broker_url"),
        description="redis://, rediss:// or amqp:// URL of the broker.",
    )
    result_backend: str | None = Field(
        default=None, description="Redis URL for results; defaults to a Redis broker's URL."
    )
    state_url: str | None = Field(
        default=None,
        description="Redis URL for idempotency records; defaults to the result backend.",
    )
    artifacts_url: str | None = Field(
        default=None,
        description="Where crawl data, reports and media go: file:///dir or s3://bucket/prefix.",
    )
    namespace: str = Field(
        default="",
        description=(
            "Prefix of every queue name: empty, or lowercase words each ending in a dot, "
            "like staging. or eu.staging."
        ),
    )
    prefetch_multiplier: int = Field(default=1, ge=1, le=256)
    visibility_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Redis visibility timeout in seconds; derived from the longest time limit.",
    )
    result_expires: int = Field(default=86_400, ge=60, description="Seconds results are kept.")
    idempotency_ttl: int = Field(
        default=7 * 86_400, ge=60, description="Seconds a delivered idempotency key is remembered."
    )
    max_payload_bytes: int = Field(default=256 * 1024, ge=1024)
    publish_timeout: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description=(
            "Seconds a publish keeps retrying through a broker outage, on new connections, "
            "before it raises BrokerUnavailableError; also each broker socket's timeout."
        ),
    )
    timezone: TimeZoneName = "UTC"
    task_events: bool = Field(
        default=False,
        description=(
            "Send Celery task events from the start. Off: they cost about 40 % of no-op "
            "throughput (docs/performance.md), and Flower turns them on in running workers itself."
        ),
    )
    track_started: bool = Field(
        default=False,
        description="Record a STARTED state per task: one more result-backend write per task.",
    )
    worker_concurrency: int | None = Field(default=None, ge=1)
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Serve worker metrics and probes (/metrics, /livez, /readyz) on this port.",
    )
    metrics_address: IPvAnyAddress = Field(
        default=IPv4Address("0.0.0.0"),
        description=(
            "Address the metrics and probe server of workers and Beat binds: 0.0.0.0 (every "
            "IPv4 interface, what a pod's probes and Prometheus reach), :: (IPv6 and IPv4), or "
            "127.0.0.1 to keep them on the host."
        ),
    )
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto",
        description="Worker and Beat logs: JSON lines, text, or JSON unless on a terminal.",
    )
    log_task_data: bool = Field(
        default=False,
        description=(
            "Show task payloads and results in worker logs (the 'received' and 'succeeded' "
            "lines). Off: they hold personal data (an email's recipients), and logs reach more "
            "people than the broker and the result backend do."
        ),
    )
    liveness_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds the worker's main loop may stall before /livez answers 503.",
    )
    soft_shutdown_timeout: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Seconds a worker told to stop (SIGTERM) lets running tasks finish before it hands "
            "the rest back to the broker; derived from the longest hard time limit."
        ),
    )

    redis_sentinel_master: str = Field(
        default="mymaster",
        min_length=1,
        description=(
            "With sentinel:// URLs: the name the Sentinels monitor the Redis master under "
            "(their 'sentinel monitor <name> ...')."
        ),
    )
    redis_sentinel_password: SecretStr | None = Field(
        default=None,
        description=(
            "With sentinel:// URLs: the Sentinels' own password, when they require one "
            "(the Redis servers' password goes in the URL)."
        ),
    )
    redis_wait_replicas: int = Field(
        default=0,
        ge=0,
        description=(
            "Redis only: a publish returns once this many replicas have its messages (WAIT), "
            "so a failover to a replica cannot lose what a publisher was told was sent, and Beat "
            "fires a slot once this many replicas have its claim. 0: once the master has them "
            "(Redis replicates asynchronously)."
        ),
    )
    rabbitmq_queue_type: Literal["quorum", "classic"] = Field(
        default="quorum",
        description=(
            "RabbitMQ only: the type of work queues and DLQs. Quorum queues are replicated "
            "across the cluster's nodes and survive losing a minority of them; classic queues "
            "live on one node. A queue keeps the type it was declared with: a queue declared "
            "before must be drained and deleted (or a new TASKLANE_NAMESPACE used) to change it."
        ),
    )
    rabbitmq_delivery_limit: int = Field(
        default=20,
        ge=1,
        description=(
            "RabbitMQ quorum queues only: how often one message may come back unacknowledged "
            "(a worker that died running it, a rejection with requeue) and be handed out again; "
            "the next return dead-letters it to the DLQ."
        ),
    )

    @field_validator("broker_url")
    @classmethod
    def _check_broker(cls, value: str | None) -> str | None:
        if value is not None and _scheme(value) not in BROKER_SCHEMES:
            raise ValueError(
                f"unsupported broker scheme {_scheme(value)!r}; use one of {sorted(BROKER_SCHEMES)}"
            )
        return value

    @field_validator("result_backend", "state_url")
    @classmethod
    def _check_redis(cls, value: str | None) -> str | None:
        if value is not None and _scheme(value) not in REDIS_SCHEMES:
            raise ValueError(
                f"must be a redis://, rediss:// or sentinel:// URL, got {_scheme(value)!r}"
            )
        return value

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if not _NAMESPACE.fullmatch(value):
            # The examples are not quoted: a quoted example reads like the value that was given.
            raise ValueError(
                "must be empty or lowercase words (a-z, 0-9, -) each ending in a dot, "
                "like staging. or eu.staging."
            )
        return value

    @model_validator(mode="after")
    def _derive_backends(self) -> Settings:
        # Frozen model: derived defaults are written once, here, through object.__setattr__.
        if self.result_backend is None and is_redis_url(self.broker_url):
            object.__setattr__(self, "result_backend", self.broker_url)
        if self.state_url is None:
            object.__setattr__(self, "state_url", self.result_backend)
        return self

    def require_broker(self) -> str:
        """The broker URL, or a clear error naming the variable to set."""
        if self.broker_url is None:
            raise SettingsError("no broker configured: set TASKLANE_BROKER_URL (or REDIS_URL)")
        return self.broker_url

    def require_state(self) -> str:
        """The Redis URL for idempotency records, or a clear error."""
        if self.state_url is None:
            if self.broker_url is None:
                # Not the backend first: with a Redis broker, the broker URL is all it takes.
                raise SettingsError(
                    "no broker configured: set TASKLANE_BROKER_URL (or REDIS_URL); with a "
                    "RabbitMQ broker, also TASKLANE_RESULT_BACKEND"
                )
            raise SettingsError(
                "no Redis for results and idempotency: set TASKLANE_RESULT_BACKEND "
                "(required when the broker is not Redis)"
            )
        return self.state_url

    def require_artifacts(self) -> str:
        """The artifact store URI, or a clear error naming the variable to set."""
        if self.artifacts_url is None:
            raise SettingsError(
                "no artifact store configured: set TASKLANE_ARTIFACTS_URL "
                "(file:///abs/dir or s3://bucket/prefix)"
            )
        return self.artifacts_url

    @property
    def broker_is_redis(self) -> bool:
        """Whether the broker is Redis (or Valkey)."""
        return is_redis_url(self.broker_url)


def load(cls: type[SettingsT], **overrides: object) -> SettingsT:
    """Read ``cls`` from the environment, turning validation errors into one line.

    Raises:
        SettingsError: names each offending variable, its value (never a secret's) and what is
            expected (:func:`describe_invalid_settings`).
    """
    from pydantic import ValidationError
    from pydantic_settings import SettingsError as SourceError

    try:
        return cls(**overrides)  # type: ignore[arg-type]
    except (ValidationError, SourceError) as exc:
        raise SettingsError(describe_invalid_settings(cls, exc, overrides)) from None


def load_settings(**overrides: object) -> Settings:
    """The platform settings from the environment (see :func:`load`)."""
    return load(Settings, **overrides)


# --------------------------------------------------------------------------- bad settings
#
# One line per bad setting: the variable, the value it holds and what it should hold. load()
# raises it as a SettingsError; processes end with it through one boundary each: the `tasklane`
# CLI's error handler, and exit_on_bad_settings() around the settings of the modules `celery -A`
# loads (workers, Beat, Flower), whose import errors Celery would print as a long traceback.

#: Exit status of a process stopped by a bad setting: Click's usage error, as Celery's command
#: line uses it and ``tasklane`` does for wrong input or configuration (``EXIT_USAGE``).
EXIT_BAD_SETTINGS = 2

#: Longer values are cut in the message: it stays one readable line.
MAX_VALUE_CHARS = 80

_PARSE_FAILURE = re.compile(r'field "([^"]+)"')


def env_names(cls: type[BaseSettings], field: str) -> tuple[str, ...]:
    """The environment variables ``field`` of ``cls`` is read from, preferred first.

    The prefix (``env_prefix``) and the field name, or the field's aliases, which take no prefix.
    """
    from pydantic import AliasChoices, AliasPath

    info = cls.model_fields[field]
    alias = info.validation_alias if info.validation_alias is not None else info.alias
    if alias is None:
        return (f"{cls.model_config.get('env_prefix', '')}{field}".upper(),)
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
    names = [
        str(choice.path[0] if isinstance(choice, AliasPath) else choice).upper()
        for choice in choices
    ]
    return tuple(dict.fromkeys(names))


def is_secret(cls: type[BaseSettings], field: str) -> bool:
    """Whether ``field`` holds secrets (``SecretStr``, ``dict[str, SecretStr]``, ...)."""
    from pydantic import SecretBytes, SecretStr

    def secret(annotation: Any) -> bool:
        if isinstance(annotation, type) and issubclass(annotation, SecretStr | SecretBytes):
            return True
        return any(secret(arg) for arg in get_args(annotation))

    return secret(cls.model_fields[field].annotation)


def describe_invalid_settings(
    cls: type[BaseSettings],
    error: ValidationError | SourceError,
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """One line saying, for each bad value, the variable, the value and what is expected.

    ``invalid settings: TASKLANE_PREFETCH_MULTIPLIER: should be greater than or equal to 1
    (got '0')``. Values of secret fields are never shown; passwords in URLs are masked.

    Args:
        cls: the settings class whose construction failed.
        error: pydantic's validation error, or pydantic-settings' own error for a value it could
            not parse as JSON (complex fields such as ``dict``).
        overrides: the keyword arguments ``cls`` was called with; they win over the environment.
        environ: the environment it read (``os.environ``).
    """
    from pydantic import ValidationError

    variables = {name.upper(): value for name, value in (environ or os.environ).items()}
    given = overrides or {}
    problems: list[str] = []
    if isinstance(error, ValidationError):
        for item in error.errors():
            loc = [str(part) for part in item["loc"]]
            problems.append(
                _problem(cls, loc, _expected(item["msg"]), item.get("input"), variables, given)
            )
    else:
        # pydantic-settings raises its own error when a complex field's value is not JSON.
        found = _PARSE_FAILURE.search(str(error))
        cause = f": {error.__cause__}" if error.__cause__ else ""
        loc = [found.group(1)] if found else []
        problems.append(_problem(cls, loc, f"should be JSON{cause}", None, variables, given))
    return "invalid settings: " + "; ".join(problems)


def _problem(
    cls: type[BaseSettings],
    loc: list[str],
    expected: str,
    value: object,
    variables: Mapping[str, str],
    overrides: Mapping[str, object],
) -> str:
    field = _field(cls, loc[0]) if loc else None
    if field is None:  # a check of the model as a whole
        return f"{cls.__name__}: {expected}"
    names = env_names(cls, field)
    variable = next((name for name in names if name in variables), names[0])
    where = "".join(f"{part}: " for part in loc[1:])
    shown: object
    if loc[0] in overrides or field in overrides:  # arguments win over the environment
        shown = value
    elif variable in variables:
        shown = variables[variable]
    else:
        return f"{variable}: {where}{expected} (not set)"
    got = "secret value not shown" if is_secret(cls, field) else f"got {_shown(shown)}"
    return f"{variable}: {where}{expected} ({got})"


def _field(cls: type[BaseSettings], key: str) -> str | None:
    """The field an error location starts with: a field name, or one of its aliases."""
    if key in cls.model_fields:
        return key
    return next((name for name in cls.model_fields if key.upper() in env_names(cls, name)), None)


def _expected(message: str) -> str:
    """Pydantic's message as what the value should be: no ``Value error,`` prefix, one line."""
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if message.startswith("Input should"):
        message = message.removeprefix("Input ")
    return " ".join(message.split())


def _shown(value: object) -> str:
    """``value`` quoted for the message: passwords in URLs masked, long values cut."""
    text = value if isinstance(value, str) else str(value)
    text = _mask_password(text)
    if len(text) > MAX_VALUE_CHARS:
        text = text[: MAX_VALUE_CHARS - 1] + "…"
    return repr(text)


def _mask_password(text: str) -> str:
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return text
    if not password:
        return text
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def running_celery_command() -> bool:
    """Whether this process is Celery's command line (``celery -A module ...``) at work.

    True while Celery loads the ``-A`` module and runs its subcommand: its Click group is the
    root of the current Click context.
    """
    command = getattr(sys.modules.get("celery.bin.celery"), "celery", None)
    click = sys.modules.get("click")
    if command is None or click is None:
        return False
    context = click.get_current_context(silent=True)
    return context is not None and context.find_root().command is command


@contextmanager
def exit_on_bad_settings() -> Iterator[None]:
    """Under ``celery -A``, end the process on a :class:`SettingsError` with one line on stderr.

    Celery imports the ``-A`` module inside a broad ``except Exception`` and prints any error as
    a traceback after ``module has no attribute app``, so a module Celery loads wraps its settings
    (and the checks made with them) in this: ``error: <message>`` and exit status
    :data:`EXIT_BAD_SETTINGS`, through a :class:`SystemExit`, which Celery and Click let through.
    Imported anywhere else (a test, a script), the module raises the :class:`SettingsError`.
    """
    try:
        yield
    except SettingsError as exc:
        if not running_celery_command():
            raise
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BAD_SETTINGS) from None
