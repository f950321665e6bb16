"""Managing schedules from Python: the one place the CLI and the HTTP API go through.

A change is stored in Redis at once; the active Beat picks it up on its next tick.
Design: docs/beat.md#where-entries-come-from.
"""

from __future__ import annotations

import builtins
import getpass
import os
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from tasklane.beat.errors import (
    ScheduleError,
    ScheduleInvalidError,
    ScheduleNotFoundError,
)
from tasklane.beat.models import (
    Actor,
    AuditAction,
    AuditRecord,
    EntryView,
    Firing,
    FiringOutcome,
    FiringStatus,
    ScheduleEntry,
    Via,
)
from tasklane.beat.store import BeatStatus, ScheduleStore
from tasklane.contracts import REGISTRY, ContractRegistry
from tasklane.publish import Publisher, ResultReader
from tasklane.settings import Settings, load_settings
from tasklane.wire import headers
from tasklane.wire.broker import redis_client


class Schedules:
    """Add, edit, list, show, enable, disable, remove and run schedule entries.

    Every change is kept in the audit trail with its :class:`~tasklane.beat.models.Actor`
    (the admin, the CLI and the HTTP API pass theirs; Python callers default to their user).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        registry: ContractRegistry = REGISTRY,
        publisher: Publisher | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self._client = redis_client(self.settings.require_state(), self.settings)
        self.store = ScheduleStore(
            self._client, namespace=self.settings.namespace, registry=registry
        )
        self._publisher = publisher
        self._owns_publisher = publisher is None
        self._publisher_lock = threading.Lock()
        self._results = ResultReader(self.settings)

    def add(
        self, entry: ScheduleEntry, *, replace: bool = False, actor: Actor | None = None
    ) -> EntryView:
        """Validate and store an entry (``source="api"``); see :meth:`ScheduleStore.add`.

        Raises:
            ScheduleInvalidError: it could never fire (a one-off in the past, expired already,
                start not before expiry); the field is named.
        """
        now = datetime.now(UTC)
        _refuse_never_firing(entry, now)
        existing = self._find(entry.name) if replace else None
        stored = self.store.add(
            entry.model_copy(update={"source": "api"}), replace=replace, now=now
        )
        if existing is None:
            self._audit(stored.name, "created", actor, now)
        else:
            self._audit(stored.name, "changed", actor, now, _changes(existing, stored))
        return self.store.view(stored.name)

    def edit(
        self, name: str, changes: Mapping[str, Any], *, actor: Actor | None = None
    ) -> EntryView:
        """Change some fields of an entry made at run time, keeping its run count and history.

        ``changes`` maps field names to new values (``schedule`` is replaced whole); ``name``
        and ``source`` cannot change. A new schedule owes nothing before now.

        Raises:
            ScheduleNotFoundError: no entry of that name.
            ScheduleError: it is managed by a schedule file or code.
            ScheduleInvalidError: a field that cannot change, or an entry that could never fire.
            pydantic.ValidationError, UnknownContractError, PayloadValidationError: bad values.
        """
        fixed = sorted(set(changes) & {"name", "source", "created_at"})
        if fixed:
            raise ScheduleInvalidError(fixed[0], "cannot be changed")
        now = datetime.now(UTC)
        existing = self.store.get(name)
        if existing.source != "api":
            raise ScheduleError(
                f"schedule {name!r} is managed by {existing.source}; change it there"
            )
        merged = ScheduleEntry.model_validate({**existing.model_dump(mode="json"), **dict(changes)})
        _refuse_never_firing(merged, now)
        stored = self.store.update(merged, now=now)
        difference = _changes(existing, stored)
        if difference:
            self._audit(name, "changed", actor, now, difference)
        return self.store.view(name)

    def list(self, names: Sequence[str] | None = None) -> builtins.list[EntryView]:
        """Every entry (or those of ``names`` that exist) with its state and next run."""
        return self.store.views(names=names)

    def entries(self) -> builtins.list[ScheduleEntry]:
        """Every entry without its state: cheaper than :meth:`list` for filtering many."""
        return self.store.entries()

    def show(self, name: str) -> EntryView:
        """One entry, or :class:`~tasklane.beat.errors.ScheduleNotFoundError`."""
        return self.store.view(name)

    def enable(self, name: str, *, actor: Actor | None = None) -> EntryView:
        """Let the entry fire again, from its next slot after now (missed ones are not made up)."""
        was = self.store.get(name).enabled
        self.store.set_enabled(name, True)
        if not was:
            self._audit(name, "enabled", actor)
        return self.store.view(name)

    def disable(self, name: str, *, actor: Actor | None = None) -> EntryView:
        """Stop the entry firing, keeping it."""
        was = self.store.get(name).enabled
        self.store.set_enabled(name, False)
        if was:
            self._audit(name, "disabled", actor)
        return self.store.view(name)

    def remove(self, name: str, *, actor: Actor | None = None) -> None:
        """Delete an entry made at run time (its audit trail stays)."""
        self.store.remove(name)
        self._audit(name, "deleted", actor)

    def run_now(self, name: str, *, actor: Actor | None = None) -> str:
        """Publish the entry's task now, outside its schedule; returns the task id.

        It is published as a firing would be: the entry's priority and expiry apply, and it
        shows in the run history and the audit trail.

        Raises:
            ScheduleError: its contract is gone or its payload no longer fits.
        """
        entry = self.store.get(name)
        problem = self.store.problem(entry)
        if problem:
            raise ScheduleError(f"schedule {name!r} cannot run: {problem}")
        who = actor or default_actor()
        handle = self.publisher.publish(
            entry.task,
            entry.payload,
            priority=entry.priority,
            expires=entry.expires_after,
            headers={headers.SCHEDULE: name},
        )
        now = datetime.now(UTC)
        self.store.record_manual_run(name, now)
        self.store.record_firing(
            name, Firing(task_id=handle.id, fired_at=now, slot=None, manual=True, actor=who)
        )
        self._audit(name, "ran", who, now, {"task_id": handle.id})
        return handle.id

    def history(self, name: str, limit: int = 20) -> builtins.list[FiringOutcome]:
        """The entry's last ``limit`` firings, newest first, with what became of each task.

        Outcomes come from the result backend; without one (or once a result expired) a
        firing's status is ``unknown``. Every final failure is dead-lettered by the worker, so
        a failed task shows as ``dead-lettered`` with its error.

        Raises:
            ScheduleNotFoundError: no entry of that name.
        """
        self.store.get(name)
        return [self._outcome(firing) for firing in self.store.firings(name, limit)]

    def audit(self, name: str | None = None, limit: int = 100) -> builtins.list[AuditRecord]:
        """Who created, changed, enabled, disabled, ran or deleted entries, newest first."""
        return self.store.audit(name, limit)

    def beats(self) -> builtins.list[BeatStatus]:
        """What every live Beat process last reported."""
        return self.store.statuses()

    @property
    def publisher(self) -> Publisher:
        """The publisher run-now uses (created on first use)."""
        with self._publisher_lock:  # the HTTP API calls this from several threads
            if self._publisher is None:
                self._publisher = Publisher(self.settings, registry=self.store.registry)
            return self._publisher

    def close(self) -> None:
        """Release connections."""
        if self._owns_publisher and self._publisher is not None:
            self._publisher.close()
        self._results.close()
        self._client.close()

    def _find(self, name: str) -> ScheduleEntry | None:
        try:
            return self.store.get(name)
        except ScheduleNotFoundError:
            return None

    def _audit(
        self,
        name: str,
        action: AuditAction,
        actor: Actor | None,
        now: datetime | None = None,
        changes: Mapping[str, Any] | None = None,
    ) -> None:
        self.store.record_audit(
            AuditRecord(
                at=now or datetime.now(UTC),
                name=name,
                action=action,
                actor=actor or default_actor(),
                changes=dict(changes or {}),
            )
        )

    def _outcome(self, firing: Firing) -> FiringOutcome:
        if not self.settings.result_backend:
            return FiringOutcome(firing=firing, status="unknown")
        result = self._results.result(firing.task_id)
        state = str(result.state)
        if state == "FAILURE":
            error = result.result
            text = f"{type(error).__name__}: {error}" if error is not None else None
            return FiringOutcome(firing=firing, status="dead-lettered", error=text)
        return FiringOutcome(firing=firing, status=_STATUSES.get(state, "unknown"))

    def __enter__(self) -> Schedules:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


#: Celery's task states as a firing's status (FAILURE: dead-lettered, with the error).
_STATUSES: dict[str, FiringStatus] = {
    "PENDING": "pending",
    "RECEIVED": "pending",
    "STARTED": "started",
    "RETRY": "retrying",
    "SUCCESS": "succeeded",
    "REVOKED": "expired",
}


def default_actor(via: Via = "python") -> Actor:
    """The user this process runs as, for changes made without naming an actor."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        who = f"uid {os.getuid()}"
    return Actor(via=via, who=who)


def _refuse_never_firing(entry: ScheduleEntry, now: datetime) -> None:
    problem = entry.never_fires(now)
    if problem is not None:
        raise ScheduleInvalidError(*problem)


def _changes(old: ScheduleEntry, new: ScheduleEntry) -> dict[str, Any]:
    """``{field: {"old": x, "new": y}}`` for each field that differs, as JSON values."""
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    return {
        field: {"old": before.get(field), "new": value}
        for field, value in after.items()
        if before.get(field) != value and field not in ("created_at",)
    }
