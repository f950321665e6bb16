"""``manage.py tasklane_import_beat``: django-celery-beat's periodic tasks as Tasklane Beat entries.

Exit status 0: every row imported or skipped; 1: some refused (each line says why); 2: the
import could not run (django-celery-beat missing, no Redis, Redis down). Mapping and reasons:
docs/migrating-from-celery.md#importing-from-django-celery-beat.
"""

from __future__ import annotations

from argparse import ArgumentParser
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis
from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS

from tasklane.contrib.django.conf import options
from tasklane.errors import SettingsError

if TYPE_CHECKING:
    from tasklane.contrib.django.beat_import import RowReport

#: The import could not run (django-celery-beat missing, no Redis store, Redis down).
CANNOT_RUN = 2
#: Some rows were refused (the others were imported or skipped).
SOME_REFUSED = 1


class Command(BaseCommand):
    """Import django-celery-beat's ``PeriodicTask`` rows into the Tasklane Beat store."""

    help = (
        "Import django-celery-beat's periodic tasks as Tasklane Beat entries (source 'api'). "
        "Prints one line per row: imported, would import (--dry-run), skipped or refused, with "
        "the reason. Exit status 1 if some row was refused, 2 if the import could not run."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Convert and check every row, report, and write nothing (neither store).",
        )
        parser.add_argument(
            "--replace",
            action="store_true",
            help="Overwrite Tasklane entries of the same name made at run time (not file/code).",
        )
        parser.add_argument(
            "--disable-source",
            action="store_true",
            help=(
                "Disable each imported row in django-celery-beat, so that its Beat stops firing "
                "what Tasklane Beat now fires. Skipped and refused rows are left as they are."
            ),
        )
        parser.add_argument(
            "--celery-broker",
            choices=["redis", "rabbitmq"],
            default=None,
            help=(
                "The broker django-celery-beat's Celery used: a row's priority meant 9 most "
                "urgent on RabbitMQ, 0 most urgent on Redis. Rows with a priority are refused "
                "without it."
            ),
        )
        parser.add_argument(
            "--database",
            default=DEFAULT_DB_ALIAS,
            help="The database holding django-celery-beat's tables (default: 'default').",
        )

    def handle(self, *args: Any, **arguments: Any) -> None:
        from tasklane.beat.client import Schedules, default_actor
        from tasklane.contrib.django import beat_import

        dry_run: bool = arguments["dry_run"]
        database: str = arguments["database"]
        try:
            rows = beat_import.read_rows(database)
        except beat_import.BeatNotInstalledError as exc:
            raise CommandError(str(exc), returncode=CANNOT_RUN) from None
        django_options = options()
        try:
            schedules = Schedules(django_options.settings, registry=django_options.registry)
        except SettingsError as exc:
            raise CommandError(f"no schedule store: {exc}", returncode=CANNOT_RUN) from None
        try:
            with schedules:
                reports = beat_import.import_rows(
                    rows,
                    schedules,
                    now=datetime.now(UTC),
                    actor=default_actor("import"),
                    dry_run=dry_run,
                    replace=arguments["replace"],
                    celery_broker=arguments["celery_broker"],
                )
        except redis.RedisError as exc:
            raise CommandError(
                f"the schedule store is unreachable: {exc}", returncode=CANNOT_RUN
            ) from None
        for report in reports:
            self.stdout.write(
                f"{report.status:<12}  {report.row.name!r} -> {report.name}: {report.detail}"
            )
        if arguments["disable_source"]:
            self._disable_source(reports, database, dry_run)
        counts: Counter[str] = Counter(report.status for report in reports)
        summary = ", ".join(f"{counts[status]} {status}" for status in _ORDER if counts[status])
        self.stdout.write(f"{len(reports)} django-celery-beat rows: {summary or 'none'}")
        if counts["refused"]:
            raise CommandError(
                f"{counts['refused']} of {len(reports)} rows refused; the lines above say why",
                returncode=SOME_REFUSED,
            )

    def _disable_source(self, reports: list[RowReport], database: str, dry_run: bool) -> None:
        from tasklane.contrib.django import beat_import

        # Only rows Tasklane now fires: a refused row keeps running under django-celery-beat.
        done = ("would import",) if dry_run else ("imported",)
        enabled = [r.row for r in reports if r.status in done and r.row.enabled]
        if not dry_run:
            beat_import.disable_rows([row.pk for row in enabled], database)
        verb = "would disable" if dry_run else "disabled"
        for row in enabled:
            self.stdout.write(f"{verb} in django-celery-beat: {row.name!r}")


_ORDER = ("imported", "would import", "skipped", "refused")
