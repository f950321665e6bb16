"""Django configured for these tests: a PostgreSQL database of this process's own (one per xdist
worker, created and dropped by ``django_project``) as ``default``, and a SQLite file as ``sqlite``.

Settings are configured when this file is loaded, before the test modules (which import the
app's models) are collected; nothing connects to a database until a test here runs.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import BrokerEnv

POSTGRES = {"HOST": "127.0.0.1", "PORT": "5432", "USER": "postgres"}
#: The database the per-process test databases are created from.
ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
ALIASES = ("default", "sqlite")


def pytest_report_header() -> str:
    import django

    return f"django: {django.__version__}"


def _database_name() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"tasklane_django_{worker}_{uuid.uuid4().hex[:8]}"


def _configure(database: str, sqlite: Path) -> None:
    import django
    from django.conf import settings

    if settings.configured:
        raise RuntimeError("Django was configured before tests/integration/django/conftest.py")
    settings.configure(
        SECRET_KEY="tasklane-tests",
        DEBUG=False,
        USE_TZ=True,
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF="tests.integration.django.urls",
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "django_celery_beat",  # tasklane_import_beat reads its tables (test_import_beat.py)
            "tasklane.contrib.django",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ],
        DATABASES={
            "default": {"ENGINE": "django.db.backends.postgresql", "NAME": database, **POSTGRES},
            "sqlite": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(sqlite)},
        },
        # Superusers are made per test: the fastest hasher.
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        STATIC_URL="/static/",
        TASKLANE={},
    )
    django.setup()


DATABASE = _database_name()
SQLITE = Path(tempfile.gettempdir()) / f"{DATABASE}.sqlite3"
_configure(DATABASE, SQLITE)


@pytest.fixture(scope="session")
def django_project() -> Iterator[str]:
    """This process's PostgreSQL database and SQLite file, made and migrated; yields the name."""
    import psycopg
    from django.core.management import call_command
    from django.db import connections

    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{DATABASE}"')
    try:
        for alias in ALIASES:
            call_command("migrate", database=alias, verbosity=0)
        yield DATABASE
    finally:
        connections.close_all()
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        SQLITE.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def _empty_outbox(django_project: str) -> Iterator[None]:
    yield
    from tasklane.contrib.django.models import OutboxMessage

    for alias in ALIASES:
        OutboxMessage.objects.using(alias).all().delete()


@pytest.fixture
def tasklane_setting() -> Iterator[Callable[..., None]]:
    """Sets ``settings.TASKLANE`` for this test (``override_settings``), any number of times."""
    from django.test import override_settings

    overrides: list[Any] = []

    def configure(**keys: Any) -> None:
        override = override_settings(TASKLANE=keys)
        override.enable()
        overrides.append(override)

    yield configure
    for override in reversed(overrides):
        override.disable()


@pytest.fixture
def email_queue_depth(broker: BrokerEnv) -> Callable[[], int]:
    """How many messages wait in this test's ``notifier.email`` queue on its broker."""
    from tasklane.contracts import SEND_EMAIL
    from tasklane.wire.broker import connect
    from tasklane.wire.queues import depths
    from tasklane.wire.routing import queue_name

    def depth() -> int:
        with connect(broker.settings) as connection:
            return depths(connection, [queue_name(SEND_EMAIL, broker.namespace)])[0]

    return depth


@pytest.fixture
def postgres_dsn(django_project: str) -> str:
    """A libpq connection string of this process's test database, for a test's own connections."""
    host, port, user = POSTGRES["HOST"], POSTGRES["PORT"], POSTGRES["USER"]
    return f"host={host} port={port} user={user} dbname={django_project}"


@pytest.fixture
def committed_rows(postgres_dsn: str) -> Callable[[str, str], int]:
    """Outbox rows of a task id in a database, as another connection sees them: committed ones."""
    import sqlite3

    import psycopg

    def count(alias: str, task_id: str) -> int:
        query = "SELECT count(*) FROM tasklane_outbox WHERE task_id = %s"
        row: Any
        if alias == "sqlite":
            with sqlite3.connect(SQLITE) as other:
                row = other.execute(query.replace("%s", "?"), [task_id]).fetchone()
        else:
            with psycopg.connect(postgres_dsn) as other:
                row = other.execute(query, [task_id]).fetchone()
        return int(row[0])

    return count
