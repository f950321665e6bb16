"""The Django application ``tasklane`` (``INSTALLED_APPS = [..., "tasklane.contrib.django"]``)."""

from __future__ import annotations

from django.apps import AppConfig


class TasklaneConfig(AppConfig):
    """Holds the outbox model and registers Tasklane's system checks."""

    name = "tasklane.contrib.django"
    label = "tasklane"
    verbose_name = "Tasklane"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from tasklane.contrib.django.checks import register_checks

        register_checks()
