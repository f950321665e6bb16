"""The app itself: its public door, its migration, and the Django it runs on."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO

import django
import pytest
from django.apps import apps
from django.core.management import call_command

import tasklane.contrib.django

pytestmark = pytest.mark.integration


def test_the_public_names_are_exactly_these() -> None:
    assert tasklane.contrib.django.__all__ == ["publish", "publish_on_commit"]
    for name in tasklane.contrib.django.__all__:
        assert callable(getattr(tasklane.contrib.django, name))
    with pytest.raises(AttributeError):
        _ = tasklane.contrib.django.OutboxMessage  # type: ignore[attr-defined]


def test_importing_the_package_loads_no_models_and_no_database_layer() -> None:
    script = "import sys, tasklane.contrib.django\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert "tasklane.contrib.django" in loaded
    heavy = {"django.db", "django.db.models", "django.apps", "tasklane.contrib.django.publishing"}
    assert not heavy & loaded


def test_the_app_is_labelled_tasklane() -> None:
    config = apps.get_app_config("tasklane")
    assert (config.name, config.verbose_name) == ("tasklane.contrib.django", "Tasklane")
    assert config.get_model("OutboxMessage")._meta.db_table == "tasklane_outbox"


def test_the_migration_matches_the_models() -> None:
    out = StringIO()
    # --check exits non-zero (SystemExit) when the models need a migration that does not exist.
    call_command("makemigrations", "tasklane", check=True, dry_run=True, stdout=out)
    assert "No changes detected in app 'tasklane'" in out.getvalue()


def test_the_required_django_is_the_one_running() -> None:
    """``make test-django6`` sets TASKLANE_REQUIRE_DJANGO=6.1: those tests must run on it."""
    required = os.environ.get("TASKLANE_REQUIRE_DJANGO", "5.2")
    assert django.__version__.startswith(f"{required}.")
