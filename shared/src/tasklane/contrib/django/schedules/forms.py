"""The schedule form: an entry of any kind, its payload JSON checked against its contract.

Every problem is put on the field it concerns, whether the form, the contract (``payload``, with
the JSON path: ``to.0: value is not a valid email address``) or the schedules API
(``ScheduleInvalidError.field``) finds it.
"""

from __future__ import annotations

import json
import zoneinfo
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django import forms
from django.core.validators import RegexValidator
from django.utils import timezone as django_timezone
from pydantic import ValidationError

from tasklane.beat.models import ENTRY_NAME_PATTERN, ScheduleEntry
from tasklane.contracts import ContractRegistry
from tasklane.contracts.validation import validate_payload
from tasklane.contrib.django.schedules.listing import KINDS
from tasklane.contrib.django.schedules.values import (
    CRON_FIELDS,
    aware,
    form_field,
    initial_of,
    local_text,
    zones,
)
from tasklane.errors import PayloadValidationError, UnknownContractError

#: What an edit may change; ``enabled`` goes through enable and disable.
EDITABLE = (
    "task",
    "payload",
    "schedule",
    "start_at",
    "expires_at",
    "description",
    "priority",
    "expires_after",
)
#: The form's fieldsets, as ``admin.helpers.AdminForm`` takes them; the kind's own are shown.
FIELDSETS: list[tuple[str | None, dict[str, Any]]] = [
    (None, {"fields": ["name", "task", "payload", "description", "enabled"]}),
    ("Schedule", {"fields": ["kind", "timezone"]}),
    ("Interval", {"fields": ["every"], "classes": ["tasklane-kind", "tasklane-kind-interval"]}),
    ("Crontab", {"fields": [CRON_FIELDS], "classes": ["tasklane-kind", "tasklane-kind-crontab"]}),
    ("One-off", {"fields": ["at"], "classes": ["tasklane-kind", "tasklane-kind-clocked"]}),
    ("When it may run", {"fields": ["start_at", "expires_at"]}),
    ("Each firing", {"fields": ["priority", "expires_after"]}),
]
_DATETIME_HELP = "In the time zone above, e.g. 2026-12-01 09:00, or ISO 8601 with an offset."


class LocalDateTimeField(forms.DateTimeField):
    """A date-time as typed: a naive one is placed in the form's ``timezone`` by the form.

    Django's own field would read it in the project's current time zone instead.
    """

    widget = forms.TextInput(attrs={"class": "vTextField", "placeholder": "YYYY-MM-DD HH:MM"})

    def to_python(self, value: Any) -> datetime | None:
        if value in self.empty_values:
            return None
        if isinstance(value, datetime):
            return value
        try:
            return datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise forms.ValidationError(
                "Enter a date and time such as 2026-12-01 09:00 (or ISO 8601 with an offset).",
                code="invalid",
            ) from None

    def prepare_value(self, value: Any) -> Any:
        return local_text(value) if isinstance(value, datetime) else value


class ScheduleForm(forms.Form):
    """Create or edit one entry; :attr:`entry` holds it once the form is valid."""

    name = forms.CharField(
        max_length=200,
        validators=[
            RegexValidator(
                ENTRY_NAME_PATTERN,
                "Letters, digits and _ . : - only, starting with a letter or a digit.",
            )
        ],
        widget=forms.TextInput(attrs={"class": "vTextField"}),
    )
    task = forms.ChoiceField(label="Contract", help_text="The task the entry publishes.")
    payload = forms.CharField(
        widget=forms.Textarea(
            attrs={"rows": 10, "cols": 80, "class": "vLargeTextField", "spellcheck": "false"}
        ),
        initial="{}",
        help_text="A JSON object, checked against the contract's payload.",
    )
    description = forms.CharField(
        required=False, max_length=500, widget=forms.Textarea(attrs={"rows": 2, "cols": 80})
    )
    enabled = forms.BooleanField(required=False, initial=True)
    kind = forms.ChoiceField(choices=KINDS, initial="interval")
    timezone = forms.ChoiceField(
        label="Time zone",
        help_text="Crontab fields match this zone's wall clock; the times below are read in it.",
    )
    every = forms.FloatField(
        required=False,
        label="Every (seconds)",
        widget=forms.NumberInput(attrs={"step": "any", "class": "vIntegerField"}),
    )
    minute = forms.CharField(required=False, initial="*", max_length=200)
    hour = forms.CharField(required=False, initial="*", max_length=200)
    day_of_month = forms.CharField(required=False, initial="*", max_length=200)
    month_of_year = forms.CharField(required=False, initial="*", max_length=200)
    day_of_week = forms.CharField(
        required=False, initial="*", max_length=200, help_text="0-6 or sun-sat; 0 is Sunday."
    )
    at = LocalDateTimeField(required=False, label="At", help_text=_DATETIME_HELP)
    start_at = LocalDateTimeField(required=False, label="Start", help_text="No run before this.")
    expires_at = LocalDateTimeField(required=False, label="Expires", help_text="No run after it.")
    priority = forms.IntegerField(
        required=False,
        min_value=0,
        max_value=9,
        help_text="0-9; empty for the contract's own.",
        widget=forms.NumberInput(attrs={"class": "vIntegerField"}),
    )
    expires_after = forms.FloatField(
        required=False,
        min_value=0.001,
        label="Expires after (seconds)",
        help_text="A firing not started within this is dropped; empty for never.",
        widget=forms.NumberInput(attrs={"step": "any", "class": "vIntegerField"}),
    )

    def __init__(
        self,
        *args: Any,
        registry: ContractRegistry,
        editing: ScheduleEntry | None = None,
        **kwargs: Any,
    ) -> None:
        if editing is not None:
            kwargs.setdefault("initial", initial_of(editing, registry))
        super().__init__(*args, **kwargs)
        self.registry = registry
        self.editing = editing
        names = sorted(contract.name for contract in registry)
        if editing is not None and editing.task not in names:
            names.append(editing.task)  # its contract is gone: shown, and refused on save
        self._field("task").choices = [("", "---------"), *((name, name) for name in names)]
        self._field("timezone").choices = [(zone, zone) for zone in zones()]
        self.fields["timezone"].initial = django_timezone.get_current_timezone_name()
        if editing is not None:
            self.fields["name"].disabled = True  # the name is the entry's identity
        #: The entry the form describes, once it is valid.
        self.entry: ScheduleEntry | None = None

    def _field(self, name: str) -> forms.ChoiceField:
        field = self.fields[name]
        assert isinstance(field, forms.ChoiceField)
        return field

    def clean_payload(self) -> dict[str, Any]:
        text = self.cleaned_data["payload"]
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(
                f"line {exc.lineno} column {exc.colno}: {exc.msg}", code="json"
            ) from None
        if not isinstance(value, dict):
            raise forms.ValidationError("must be a JSON object: {...}", code="json")
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        schedule = self._schedule(data)
        payload = self._payload(data)
        if self.errors or schedule is None or payload is None:
            return data
        zone = zoneinfo.ZoneInfo(data["timezone"])
        try:
            self.entry = ScheduleEntry(
                name=data["name"],
                task=data["task"],
                payload=payload,
                schedule=schedule,
                enabled=data["enabled"],
                start_at=aware(data["start_at"], zone),
                expires_at=aware(data["expires_at"], zone),
                description=data["description"],
                priority=data["priority"],
                expires_after=data["expires_after"],
            )
        except ValidationError as exc:
            for error in exc.errors():
                dotted = ".".join(str(part) for part in error["loc"])
                self.add_problem(dotted, error["msg"])
        return data

    def add_problem(self, dotted: str, message: str) -> None:
        """Put a problem that names a field as the API does (``schedule.at``) on that field."""
        field, text = form_field(dotted, message)
        self.add_error(field if field in self.fields else None, text)

    def changes(self, current: ScheduleEntry) -> dict[str, Any]:
        """The editable fields of :attr:`entry` that differ from ``current``, as JSON values."""
        assert self.entry is not None
        new = self.entry.model_dump(mode="json")
        return {
            name: new[name]
            for name in EDITABLE
            if getattr(self.entry, name) != getattr(current, name)
        }

    def _schedule(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        kind = data.get("kind")
        zone = data.get("timezone")
        if kind == "interval":
            if data.get("every") is None:
                self.add_error("every", "Give the seconds between two runs.")
                return None
            return {"kind": kind, "every": data["every"]}
        if kind == "crontab":
            if zone is None:
                return None
            fields = {name: (data.get(name) or "*").strip() for name in CRON_FIELDS}
            return {"kind": kind, **fields, "timezone": zone}
        if kind == "clocked":
            if data.get("at") is None:
                if "at" not in self.errors:
                    self.add_error("at", "Give the date and time to run at.")
                return None
            if zone is None:
                return None
            return {"kind": kind, "at": aware(data["at"], zoneinfo.ZoneInfo(zone))}
        return None

    def _payload(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        """The payload as its contract normalises it (so an unchanged one compares equal)."""
        payload, task = data.get("payload"), data.get("task")
        if payload is None or not task:
            return None
        try:
            model = validate_payload(self.registry[task], payload)
        except UnknownContractError as exc:
            self.add_error("task", str(exc))
            return None
        except PayloadValidationError as exc:
            for problem in exc.problems:
                self.add_error("payload", str(problem))
            return None
        normalised: dict[str, Any] = model.model_dump(mode="json")
        return normalised
