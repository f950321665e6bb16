"""The transactional outbox: a row per task, written in the caller's transaction, sent later."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import models
from django.db.models import Q
from django.utils import timezone


class OutboxMessage(models.Model):
    """One encoded task message waiting for the relay (``pending``), sent, or ``parked``.

    ``message`` is :meth:`tasklane.wire.protocol.TaskMessage.to_json`. ``txid`` is the writing
    transaction's id on PostgreSQL: the relay sends rows in commit order by it.
    """

    class State(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        PARKED = "parked"

    # Fields are annotated [set type, get type] for django-stubs (used without its mypy plugin).
    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    contract: models.CharField[str, str] = models.CharField(max_length=200)
    task_id: models.CharField[str, str] = models.CharField(max_length=255, unique=True)
    message: models.JSONField[dict[str, Any], dict[str, Any]] = models.JSONField()
    state: models.CharField[str, str] = models.CharField(
        max_length=8, choices=State.choices, default=State.PENDING
    )
    created_at: models.DateTimeField[datetime, datetime] = models.DateTimeField(
        default=timezone.now
    )
    txid: models.BigIntegerField[int | None, int | None] = models.BigIntegerField(null=True)
    attempts: models.PositiveIntegerField[int, int] = models.PositiveIntegerField(default=0)
    last_error: models.TextField[str, str] = models.TextField(blank=True, default="")
    sent_at: models.DateTimeField[datetime | None, datetime | None] = models.DateTimeField(
        null=True, blank=True
    )

    class Meta:
        db_table = "tasklane_outbox"
        verbose_name = "outbox message"
        indexes = [
            # The relay's claim: pending rows of one contract in commit order.
            models.Index(
                fields=["contract", "txid", "id"],
                condition=Q(state="pending"),
                name="tasklane_outbox_pending",
            ),
            # Pruning sent rows by age.
            models.Index(fields=["state", "sent_at"], name="tasklane_outbox_sent"),
        ]

    def __str__(self) -> str:
        return f"{self.contract} {self.task_id} ({self.state})"


class Schedule(models.Model):
    """Beat's schedule entries in the admin: permissions only, never a table.

    Entries live in Beat's store (Redis) and are read and changed through
    :class:`tasklane.beat.client.Schedules`; this unmanaged model gives the admin a place to hang
    its pages and Django the permissions to check: view, change, add, delete, and
    ``run_schedule`` apart from ``change``. Do not query it: it has no table.
    """

    name: models.CharField[str, str] = models.CharField(primary_key=True, max_length=200)

    class Meta:
        managed = False
        db_table = "tasklane_schedule"  # never created (managed = False)
        verbose_name = "schedule"
        permissions = [("run_schedule", "Can run a schedule now")]

    def __str__(self) -> str:
        return self.name
