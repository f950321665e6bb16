"""Typed settings read from ``TASKLANE_*`` environment variables."""

from __future__ import annotations

import re
from typing import Annotated, Literal, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasklane.errors import SettingsError

BROKER_SCHEMES = frozenset({"redis", "rediss", "amqp", "amqps", "pyamqp"})
REDIS_SCHEMES = frozenset({"redis", "rediss"})
_NAMESPACE = re.compile(r"^([a-z0-9][a-z0-9\-]*\.)*$")


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.lower()


def is_redis_url(url: str | None) -> bool:
    """Whether ``url`` points at Redis or Valkey."""
    return url is not None and _scheme(url) in REDIS_SCHEMES


def known_timezone(value: str) -> str:
    """``value`` if it names an IANA time zone, else a ``ValueError`` saying so."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


#: A string field that must name an IANA time zone (``Europe/Berlin``, ``UTC``).
TimeZoneName = Annotated[str, AfterValidator(known_timezone)]


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
        description="Prefix of every queue name ending in a dot, like 'staging.'; empty for none.",
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
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto",
        description="Worker and Beat logs: JSON lines, text, or JSON unless on a terminal.",
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
            raise ValueError(f"must be a redis:// or rediss:// URL, got {_scheme(value)!r}")
        return value

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if not _NAMESPACE.match(value):
            raise ValueError(
                "must be empty or dotted lowercase words ending in a dot: 'eu.staging.'"
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
    """Read ``cls`` from the environment, turning validation errors into one clear message.

    Raises:
        SettingsError: names each offending variable and what is wrong with it.
    """
    from pydantic import ValidationError

    prefix = str(cls.model_config.get("env_prefix", ""))
    try:
        return cls(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{prefix}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None


def load_settings(**overrides: object) -> Settings:
    """The platform settings from the environment (see :func:`load`)."""
    return load(Settings, **overrides)
