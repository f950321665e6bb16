"""Flower, the seed's Celery monitor, run against the fleet by ``tasklane flower``.

Flower shows workers (through remote-control ``inspect``, online status from heartbeats), tasks
with their arguments, results and timings (from task events: workers start without them, for
throughput, and Flower turns them on by remote control in every worker it sees) and the queues on
the broker. It also revokes tasks and shuts workers
down, so it is never served without basic auth.
"""

from __future__ import annotations

import re
import sys
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from celery.app.amqp import AMQP
from kombu.connection import Connection
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasklane.contracts import REGISTRY
from tasklane.settings import Settings, load_settings
from tasklane.wire.config import REDIS_TRANSPORT, SENTINEL_TRANSPORT, base_config
from tasklane.wire.routing import QueueOptions, dead_letter_queues, task_routes, work_queues

MIN_PASSWORD_LENGTH = 12
_URL_PREFIX = re.compile(r"^[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*$")


def _check_credentials(value: SecretStr) -> SecretStr:
    """``user:password[,user2:password2]``; errors never quote the value (it holds passwords)."""
    text = value.get_secret_value().strip()
    if not text:
        raise ValueError(
            "required: Flower is never served without authentication; "
            "set user:password[,user2:password2]"
        )
    for number, credential in enumerate(text.split(","), start=1):
        user, colon, password = credential.partition(":")
        if not user or not colon:
            raise ValueError(f"credential #{number} is not user:password")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ValueError(
                f"the password of {user!r} is shorter than {MIN_PASSWORD_LENGTH} characters"
            )
    return SecretStr(text)


class FlowerSettings(BaseSettings):
    """Read from ``TASKLANE_FLOWER_*``."""

    model_config = SettingsConfigDict(env_prefix="TASKLANE_FLOWER_", extra="ignore", frozen=True)

    basic_auth: SecretStr = Field(
        default=SecretStr(""),
        validate_default=True,  # so a missing variable fails with the message below
        description="user:password[,user2:password2]: passwords of 12 characters or more, "
        "without commas (they separate the users).",
    )
    port: int = Field(default=5555, ge=1, le=65535)
    address: str = Field(default="0.0.0.0", description="Address to listen on.")
    url_prefix: str | None = Field(
        default=None, description="Path Flower is served under, e.g. behind an Ingress: 'flower'."
    )

    @field_validator("basic_auth")
    @classmethod
    def _check_basic_auth(cls, value: SecretStr) -> SecretStr:
        return _check_credentials(value)

    @field_validator("url_prefix")
    @classmethod
    def _check_url_prefix(cls, value: str | None) -> str | None:
        if value is None or not value.strip("/"):
            return None
        prefix = value.strip("/")
        if not _URL_PREFIX.match(prefix):
            raise ValueError("must be a URL path such as 'flower' or 'ops/flower'")
        return prefix


def flower_environment(flower_settings: FlowerSettings, *, redact: bool = False) -> dict[str, str]:
    """Variables Flower reads itself (``FLOWER_*``): the credentials.

    Passed in the environment, not as ``--basic-auth``: any local user can read a process's
    command line (``ps``). ``redact`` masks the passwords, for printing.
    """
    credentials = flower_settings.basic_auth.get_secret_value()
    if redact:
        credentials = ",".join(f"{c.partition(':')[0]}:***" for c in credentials.split(","))
    return {"FLOWER_BASIC_AUTH": credentials}


def flower_command(settings: Settings, flower_settings: FlowerSettings) -> list[str]:
    """The ``celery flower`` argv for the fleet (run with :func:`flower_environment`).

    Options are ``--name=value``: Flower hands them to Tornado, which drops a separate value.

    Raises:
        SettingsError: no broker configured.
    """
    settings.require_broker()  # fail here, not in the child's import of the flower_app module
    argv = [sys.executable, "-m", "celery", "-A", "tasklane.observability.flower_app", "flower"]
    argv += [f"--port={flower_settings.port}", f"--address={flower_settings.address}"]
    # Flower's default today; said here because the task list depends on it.
    argv.append("--enable_events=True")
    if flower_settings.url_prefix:
        argv.append(f"--url_prefix={flower_settings.url_prefix}")
    return argv


class _SchemeConnection(Connection):
    """A broker connection whose URL (``as_uri``) starts with the broker URL's own scheme.

    Kombu puts the transport there, and Tasklane's Redis transports are named by import path
    (``tasklane.wire.redis_transport:SentinelTransport://...``). Flower picks the client that
    reads queue lengths for its broker tab and ``/api/queues/length`` by that scheme, and
    answered "'redis' broker is not supported" (404) to any other. Behind Sentinel, Flower's
    client asks only the first Sentinel of the URL (it takes one address): while that one is
    down, the queue lengths cannot be read (the broker tab is empty, the API answers 500).
    """

    #: The configured broker URL's scheme (``redis``, ``rediss``, ``sentinel``); set by
    #: :func:`_amqp_for`.
    scheme = ""

    def as_uri(
        self, include_password: bool = False, mask: str = "**", *args: Any, **kwargs: Any
    ) -> str:
        """Kombu's URL of the (first) broker node, under the broker URL's scheme."""
        uri = str(super().as_uri(include_password, mask, *args, **kwargs))
        transport = self.transport_cls
        prefix = f"{transport}://"
        if transport in (REDIS_TRANSPORT, SENTINEL_TRANSPORT) and uri.startswith(prefix):
            return f"{self.scheme}://{uri.removeprefix(prefix)}"
        return uri


def _amqp_for(broker_url: str) -> type[AMQP]:
    """Celery's AMQP class whose connections name the broker by ``broker_url``'s scheme."""
    scheme = urlsplit(broker_url).scheme.lower()
    connection = type("FlowerConnection", (_SchemeConnection,), {"scheme": scheme})
    amqp: type[AMQP] = type("FlowerAMQP", (AMQP,), {"Connection": connection})
    return amqp


def create_flower_app(settings: Settings | None = None) -> Celery:
    """The Celery app Flower monitors with: the fleet's broker and queues, and no tasks.

    ``task_queues`` name every work queue and DLQ so the broker tab lists them while no worker
    reports its queues; the transport options let it count Redis's priority sub-lists and find
    the master behind Sentinel (``master_name``, the Sentinels' password).
    """
    settings = settings or load_settings()
    options = QueueOptions.of(settings)
    queues = work_queues(REGISTRY, settings.namespace, options)
    amqp = _amqp_for(settings.require_broker())
    app = Celery("tasklane-flower", set_as_current=False, amqp=amqp)
    app.conf.update(
        base_config(settings),
        task_queues=queues + dead_letter_queues(REGISTRY, settings.namespace, options),
        task_default_queue=queues[0].name,
        # Tasks sent from Flower's UI reach their contract's queue (and are validated there).
        task_routes=task_routes(REGISTRY, settings.namespace),
    )
    return app
