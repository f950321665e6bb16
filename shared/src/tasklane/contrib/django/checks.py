"""Django system checks of the ``TASKLANE`` setting and the outbox (``manage.py check``).

``tasklane.E001`` invalid setting, ``E002`` no broker URL, ``E003`` outbox table missing (a
database check), ``E004`` unknown contract in ``CONTRACTS``, ``W001`` outbox not on PostgreSQL,
``W002`` the admin installed but no Redis for Beat's schedule store.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from types import FrameType
from typing import Any

from django.apps import apps
from django.core.checks import CheckMessage, Error, Tags, register
from django.core.checks import Warning as CheckWarning
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections

from tasklane.contrib.django.conf import DjangoOptions, options


def register_checks() -> None:
    """Register every check with Django's registry (from ``TasklaneConfig.ready``)."""
    register(check_settings, "tasklane")
    register(check_schedule_store, "tasklane", Tags.admin)
    register(check_outbox_table, "tasklane", Tags.database)


def check_settings(app_configs: Iterable[Any] | None = None, **_: Any) -> list[CheckMessage]:
    """E001, E002, E004 and W001: what can be told from the settings alone."""
    try:
        config = options()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="tasklane.E001")]
    problems: list[CheckMessage] = []
    if config.settings.broker_url is None:
        problems.append(
            Error(
                "no broker URL is configured",
                hint='Set TASKLANE["BROKER_URL"] or the TASKLANE_BROKER_URL environment variable.',
                id="tasklane.E002",
            )
        )
    problems.extend(
        Error(
            f'TASKLANE["CONTRACTS"] names {name!r}, which the contract registry does not hold',
            hint='Correct the name, or point TASKLANE["REGISTRY"] at the registry that holds it.',
            id="tasklane.E004",
        )
        for name in config.contracts
        if name not in config.registry
    )
    if config.outbox and connections[config.outbox_database].vendor != "postgresql":
        problems.append(
            CheckWarning(
                f"the outbox database {config.outbox_database!r} is not PostgreSQL",
                hint=(
                    "The relay polls it, in id order: run exactly one relay. On PostgreSQL "
                    "it is woken by NOTIFY and any number of relays keep commit order."
                ),
                id="tasklane.W001",
            )
        )
    return problems


def check_schedule_store(app_configs: Iterable[Any] | None = None, **_: Any) -> list[CheckMessage]:
    """W002: the admin's schedule pages have no Redis to read Beat's entries from.

    Without any broker E002 says so already; this is a broker that is not Redis (RabbitMQ)
    with no ``RESULT_BACKEND`` or ``STATE_URL``.
    """
    config = _valid_options()
    if config is None or not apps.is_installed("django.contrib.admin"):
        return []
    platform = config.settings
    if platform.broker_url is None or platform.state_url is not None:
        return []
    return [
        CheckWarning(
            "the admin's schedule pages have no schedule store: no Redis is configured",
            hint=(
                'Set TASKLANE["RESULT_BACKEND"] (or STATE_URL) to the Redis that Beat uses. '
                "Not using Beat? Add tasklane.W002 to SILENCED_SYSTEM_CHECKS."
            ),
            id="tasklane.W002",
        )
    ]


def check_outbox_table(
    app_configs: Iterable[Any] | None = None,
    databases: Sequence[str] | None = None,
    **_: Any,
) -> list[CheckMessage]:
    """E003: the outbox is on but its table is missing from its database."""
    config = _valid_options()
    if config is None or not config.outbox or _migrating():
        return []
    alias = config.outbox_database
    if databases is None or alias not in databases:
        return []
    from tasklane.contrib.django.models import OutboxMessage

    table = OutboxMessage._meta.db_table
    try:
        with connections[alias].cursor() as cursor:
            tables = connections[alias].introspection.table_names(cursor)
    except DatabaseError:
        return []  # an unreachable database is Django's own check to report
    if table in tables:
        return []
    return [
        Error(
            f"the outbox is on (TASKLANE['OUTBOX']) but database {alias!r} has no table {table!r}",
            hint=f"Run: manage.py migrate tasklane --database {alias}",
            id="tasklane.E003",
        )
    ]


def _valid_options() -> DjangoOptions | None:
    try:
        return options()
    except ImproperlyConfigured:
        return None  # E001 says so


def _migrating() -> bool:
    """Whether ``migrate`` is running these checks: it checks before it creates the table."""
    command = sys.modules.get("django.core.management.commands.migrate")
    if command is None:
        return False
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if isinstance(frame.f_locals.get("self"), command.Command):
            return True
        frame = frame.f_back
    return False
