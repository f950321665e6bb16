"""What the schedule pages show: list rows, an entry's details, history and audit, the form page."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from django.contrib import messages
from django.contrib.admin import AdminSite, helpers
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from pydantic import ValidationError

from tasklane.beat.errors import ScheduleError, ScheduleExistsError, ScheduleInvalidError
from tasklane.beat.models import AuditRecord, EntryView, FiringOutcome, ScheduleEntry
from tasklane.contrib.django.conf import options
from tasklane.contrib.django.schedules.forms import FIELDSETS, ScheduleForm
from tasklane.contrib.django.schedules.listing import KINDS, summary
from tasklane.contrib.django.schedules.service import actor, schedules
from tasklane.contrib.django.schedules.values import shown_payload
from tasklane.errors import PayloadValidationError, UnknownContractError


class EntryAdmin(Protocol):
    """What these pages use of ``ScheduleAdmin`` (named here, so neither imports the other)."""

    admin_site: AdminSite

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool: ...

    def url(self, page: str, name: str | None = None) -> str: ...

    def context(self, request: HttpRequest, title: str) -> dict[str, Any]: ...


#: Where entries not made at run time come from, as the pages say it.
MANAGED_BY = {
    "file": "the schedule file (TASKLANE_BEAT_SCHEDULE_FILE)",
    "code": "code: beat_schedule or add_periodic_task in Beat's Celery app",
}
KIND_LABELS = {kind: label.lower() for kind, label in KINDS}
SOURCE_LABELS = {"api": "runtime", "file": "schedule file", "code": "code"}
_DONE = {"enable": "Enabled", "disable": "Disabled", "run_now": "Ran now"}


@dataclass(frozen=True)
class Row:
    """One line of the list."""

    name: str
    task: str
    kind: str
    summary: str
    enabled: bool
    source: str
    last_run_at: datetime | None
    next_run_at: datetime | None
    run_count: int
    problem: str | None

    @classmethod
    def of(cls, view: EntryView) -> Row:
        entry = view.entry
        return cls(
            name=entry.name,
            task=entry.task,
            kind=KIND_LABELS[entry.schedule.kind],
            summary=summary(entry.schedule),
            enabled=entry.enabled,
            source=SOURCE_LABELS.get(entry.source, entry.source),
            last_run_at=view.state.last_run_at,
            next_run_at=view.next_run_at,
            run_count=view.state.total_run_count,
            problem=view.problem,
        )


@dataclass(frozen=True)
class Change:
    """One field of an audit record: changed from ``old`` to ``new``, or a detail (``task_id``)."""

    field: str
    new: str
    old: str | None = None


def detail(
    view: EntryView, history: Sequence[FiringOutcome], audit: Sequence[AuditRecord]
) -> dict[str, Any]:
    """The template context of an entry's page (besides the admin's own)."""
    entry = view.entry
    payload = shown_payload(entry, options().registry)
    return {
        "view": view,
        "entry": entry,
        "row": Row.of(view),
        "payload": json.dumps(payload, indent=2, ensure_ascii=False),
        "managed_by": MANAGED_BY.get(entry.source),
        "history": history,
        "audit": [(record, _changes(record)) for record in audit],
    }


def done_message(action: str, names: Sequence[str]) -> str:
    return f"{_DONE[action]}: {', '.join(names)}."


def form_page(
    model_admin: EntryAdmin, request: HttpRequest, current: ScheduleEntry | None
) -> HttpResponse:
    """The add or edit page; on a valid POST, the entry stored and a redirect to its page."""
    registry = options().registry
    if request.method == "POST":
        form = ScheduleForm(request.POST, registry=registry, editing=current)
        if form.is_valid() and _save(request, form, current):
            assert form.entry is not None
            if not model_admin.has_view_permission(request):  # may add, not look: as Django's
                return HttpResponseRedirect(reverse(f"{model_admin.admin_site.name}:index"))
            return HttpResponseRedirect(model_admin.url("change", form.entry.name))
    else:
        form = ScheduleForm(registry=registry, editing=current)
    title = "Add schedule" if current is None else f"Change schedule {current.name}"
    context = {
        **model_admin.context(request, title),
        # A plain Form serves: the helpers read only its fields and errors (stubs: ModelForm).
        "adminform": helpers.AdminForm(form, FIELDSETS, {}, model_admin=model_admin),  # type: ignore[arg-type]
        "form": form,
        "errors": helpers.AdminErrorList(form, []),  # type: ignore[arg-type]
        "add": current is None,
        "entry": current,
    }
    return TemplateResponse(request, "tasklane/admin/schedules/form.html", context)


def _save(request: HttpRequest, form: ScheduleForm, current: ScheduleEntry | None) -> bool:
    """Store the form's entry; False with the API's objections put on the form's fields."""
    entry = form.entry
    assert entry is not None
    manager = schedules()
    who = actor(request)
    try:
        if current is None:
            manager.add(entry, actor=who)
            messages.success(request, f"The schedule “{entry.name}” was added.")
            return True
        changes = form.changes(current)
        if changes:
            manager.edit(entry.name, changes, actor=who)
        if entry.enabled != current.enabled:
            (manager.enable if entry.enabled else manager.disable)(entry.name, actor=who)
        said = "was changed" if changes or entry.enabled != current.enabled else "is unchanged"
        messages.success(request, f"The schedule “{entry.name}” {said}.")
        return True
    except ScheduleInvalidError as exc:
        form.add_problem(exc.field, exc.reason)
    except ValidationError as exc:  # edit re-validates the merged entry
        for error in exc.errors():
            form.add_problem(".".join(str(part) for part in error["loc"]), error["msg"])
    except PayloadValidationError as exc:
        for problem in exc.problems:
            form.add_error("payload", str(problem))
    except UnknownContractError as exc:
        form.add_error("task", str(exc))
    except ScheduleExistsError as exc:
        form.add_error("name" if current is None else None, str(exc))
    except ScheduleError as exc:
        form.add_error(None, str(exc))
    return False


def _changes(record: AuditRecord) -> list[Change]:
    changes = []
    for field, value in sorted(record.changes.items()):
        if isinstance(value, dict) and set(value) == {"old", "new"}:
            changes.append(Change(field, _short(value["new"]), _short(value["old"])))
        else:  # a detail of the action, such as the task id a run published
            changes.append(Change(field, _short(value)))
    return changes


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
