"""Writing outbox rows: a task encoded now, stored in the caller's transaction, sent by the relay.

On PostgreSQL the row carries its transaction's id (the relay's commit order) and a NOTIFY on
:data:`CHANNEL` wakes the relay when, and only if, the transaction commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from django.db import connections, transaction
from django.db.models import BigIntegerField
from django.db.models.expressions import RawSQL
from pydantic import BaseModel

from tasklane.contracts import TaskContract
from tasklane.contrib.django.conf import options
from tasklane.contrib.django.models import OutboxMessage
from tasklane.publish import Publisher
from tasklane.wire.protocol import TaskMessage

#: The PostgreSQL notification channel the relay listens on; the payload is the contract name.
CHANNEL = "tasklane_outbox"


def enqueue(
    sender: Publisher,
    task: str | TaskContract[Any, Any],
    payload: BaseModel | Mapping[str, Any],
    *,
    using: str | None = None,
    task_id: str | None = None,
    priority: int | None = None,
    countdown: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> TaskMessage:
    """Validate and encode one task and write it to the outbox in the current transaction.

    When the contract's idempotency key is one payload field and the payload leaves it empty,
    the task id becomes the key, so a message the relay sends twice is run once.

    Args:
        sender: encodes the message (for its broker kind) and validates the payload.
        using: the database alias; must be ``OUTBOX_DATABASE`` (``None`` means that one).

    Raises:
        ValueError: ``using`` names another database than the outbox's.
        PayloadValidationError: the payload breaks the contract (the message names the field).
    """
    alias = options().outbox_database
    if using is not None and using != alias:
        raise ValueError(
            f"the outbox is in database {alias!r} (TASKLANE['OUTBOX_DATABASE']), "
            f"not {using!r}: its rows must be written in that database's transaction"
        )
    contract = sender.contract(task)
    task_id = task_id or str(uuid.uuid4())
    message = sender.encode(
        contract,
        _keyed_by_task_id(contract, payload, task_id),
        task_id=task_id,
        priority=priority,
        countdown=countdown,
        headers=headers,
    )
    _write(alias, contract.name, message)
    return message


def _keyed_by_task_id(
    contract: TaskContract[Any, Any], payload: BaseModel | Mapping[str, Any], task_id: str
) -> BaseModel | Mapping[str, Any]:
    """``payload`` with the task id as its idempotency key, when the key is one field left empty."""
    if len(contract.idempotency_key) != 1:
        return payload
    (field,) = contract.idempotency_key
    data = payload.model_dump() if isinstance(payload, BaseModel) else payload
    if data.get(field) not in (None, ""):
        return payload
    return {**data, field: task_id}


def _write(alias: str, contract: str, message: TaskMessage) -> None:
    connection = connections[alias]
    postgres = connection.vendor == "postgresql"
    # The caller's transaction when there is one; otherwise the row and its NOTIFY commit together.
    with transaction.atomic(using=alias, savepoint=False):
        OutboxMessage.objects.using(alias).create(
            contract=contract,
            task_id=message.task_id,
            message=message.to_json(),
            txid=(
                RawSQL("pg_current_xact_id()::text::bigint", (), output_field=BigIntegerField())
                if postgres
                else None
            ),
        )
        if postgres:
            with connection.cursor() as cursor:
                # Delivered at commit, never for a rollback.
                cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, contract])
