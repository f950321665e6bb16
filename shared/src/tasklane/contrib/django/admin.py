"""Tasklane in Django's admin: the outbox (what waits, was sent, is parked and why) and Beat's
schedules (:mod:`tasklane.contrib.django.schedules`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from tasklane.contrib.django.conf import options
from tasklane.contrib.django.models import OutboxMessage, Schedule
from tasklane.contrib.django.schedules.admin import ScheduleAdmin

if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[OutboxMessage]
else:  # generic in django-stubs only
    _ModelAdmin = admin.ModelAdmin


class ContractFilter(admin.SimpleListFilter):
    """Rows of one contract, named by the registry: ``DISTINCT contract`` would scan the table."""

    title = "contract"
    parameter_name = "contract"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        config = options()
        names = config.contracts or tuple(contract.name for contract in config.registry)
        return [(name, name) for name in sorted(names)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset if value is None else queryset.filter(contract=value)


@admin.register(OutboxMessage)
class OutboxMessageAdmin(_ModelAdmin):
    """Outbox rows, read-only; parked rows, their reason shown, can be sent again."""

    list_display = (
        "id",
        "contract",
        "task_id",
        "state",
        "created_at",
        "sent_at",
        "attempts",
        "last_error",
    )
    list_filter = ("state", ContractFilter)
    search_fields = ("task_id",)
    search_help_text = "A whole task id."
    readonly_fields = tuple(field.name for field in OutboxMessage._meta.fields)
    ordering = ("-id",)
    # The unfiltered count is a second scan of a table that may hold a week of sent rows.
    show_full_result_count = False
    actions = ("send_again",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[OutboxMessage]:
        return super().get_queryset(request).using(options().outbox_database)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[OutboxMessage], search_term: str
    ) -> tuple[QuerySet[OutboxMessage], bool]:
        # An exact match uses the unique index; Django's own search (icontains, or iexact for
        # "=task_id") would scan the table.
        term = search_term.strip()
        return (queryset.filter(task_id=term) if term else queryset), False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rows come from publish_on_commit only

    @admin.action(description="Send again (parked → pending)", permissions=("change",))
    def send_again(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        """Hand parked rows back to the relay, attempts and error reset."""
        count = queryset.filter(state=OutboxMessage.State.PARKED).update(
            state=OutboxMessage.State.PENDING, attempts=0, last_error=""
        )
        self.message_user(
            request, f"{count} parked message(s) set back to pending.", messages.SUCCESS
        )


admin.site.register(Schedule, ScheduleAdmin)
