"""``ScheduleAdmin``: the admin's list, add, change and delete pages, over Beat's store.

The model is unmanaged (permissions only), so every page is a view of its own rendered with the
admin's templates; Django's permissions decide who sees, changes, runs and deletes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import update_wrapper
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, cast

import redis
from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.core.paginator import Paginator
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from tasklane.beat.errors import ScheduleError, ScheduleNotFoundError
from tasklane.beat.models import EntryView, ScheduleEntry
from tasklane.contrib.django.models import Schedule
from tasklane.contrib.django.schedules import pages
from tasklane.contrib.django.schedules.listing import PAGE, PER_PAGE, SEARCH, Query
from tasklane.contrib.django.schedules.service import actor, schedules
from tasklane.errors import BrokerUnavailableError, SettingsError

if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[Schedule]
else:  # generic in django-stubs only
    _ModelAdmin = admin.ModelAdmin

P = ParamSpec("P")


class _User(Protocol):
    def has_perm(self, perm: str, obj: object = None) -> bool: ...


View = Callable[Concatenate["ScheduleAdmin", HttpRequest, P], HttpResponse]

#: Bulk actions: name, label, the permission each needs.
ACTIONS = {
    "enable": ("Enable selected schedules", "change"),
    "disable": ("Disable selected schedules", "change"),
    "run_now": ("Run selected schedules now", "run"),
}
TEMPLATES = "tasklane/admin/schedules/"


def store_errors(view: View[P]) -> View[P]:
    """Answer 503 with the reason when Beat's store is not configured or does not answer."""

    def guarded(
        self: ScheduleAdmin, request: HttpRequest, /, *args: P.args, **kwargs: P.kwargs
    ) -> HttpResponse:
        try:
            return view(self, request, *args, **kwargs)
        except (SettingsError, ImproperlyConfigured) as exc:
            problem = f"The schedule store is not configured: {exc}"
        except redis.RedisError as exc:
            problem = f"The schedule store (Redis) does not answer: {exc}"
        context = {**self.context(request, "Schedules unavailable"), "problem": problem}
        return TemplateResponse(request, TEMPLATES + "unavailable.html", context, status=503)

    return update_wrapper(guarded, view)


class ScheduleAdmin(_ModelAdmin):
    """Beat's schedule entries: list, create, edit, enable, disable, run now, delete."""

    list_per_page = PER_PAGE

    # ------------------------------------------------------------------ permissions

    def has_run_permission(self, request: HttpRequest) -> bool:
        """May run an entry now (``tasklane.run_schedule``)."""
        user = cast(_User, request.user)  # the admin's users have permissions
        return user.has_perm(f"{self.opts.app_label}.run_schedule")

    def allowed(self, request: HttpRequest, permission: str) -> bool:
        checks: dict[str, Callable[[HttpRequest], bool]] = {
            "view": self.has_view_permission,
            "add": self.has_add_permission,
            "change": self.has_change_permission,
            "delete": self.has_delete_permission,
            "run": self.has_run_permission,
        }
        return checks[permission](request)

    def require(self, request: HttpRequest, permission: str) -> None:
        if not self.allowed(request, permission):
            raise PermissionDenied

    # ------------------------------------------------------------------ URLs

    def get_urls(self) -> list[URLPattern]:
        def wrap(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
            def wrapper(*args: Any, **kwargs: Any) -> HttpResponse:
                return self.admin_site.admin_view(view)(*args, **kwargs)

            wrapper.model_admin = self  # type: ignore[attr-defined]  # as Django's own wrap
            return update_wrapper(wrapper, view)

        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("", wrap(self.changelist_view), name=f"{prefix}_changelist"),
            path("add/", wrap(self.add_view), name=f"{prefix}_add"),
            path("<str:object_id>/change/", wrap(self.change_view), name=f"{prefix}_change"),
            path("<str:object_id>/edit/", wrap(self.edit_view), name=f"{prefix}_edit"),
            path("<str:object_id>/delete/", wrap(self.delete_view), name=f"{prefix}_delete"),
            path("<str:object_id>/history/", wrap(self.history_view), name=f"{prefix}_history"),
            path("<str:object_id>/enable/", wrap(self.enable_view), name=f"{prefix}_enable"),
            path("<str:object_id>/disable/", wrap(self.disable_view), name=f"{prefix}_disable"),
            path("<str:object_id>/run/", wrap(self.run_view), name=f"{prefix}_run"),
        ]

    def url(self, page: str, name: str | None = None) -> str:
        """The URL of one of these pages (``changelist``, ``change``, ...)."""
        route = f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_{page}"
        return reverse(route, args=() if name is None else (name,))

    def context(self, request: HttpRequest, title: str) -> dict[str, Any]:
        """What every page's template needs: the admin's own context and the permissions."""
        return {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "media": self.media,
            "has_view_permission": self.has_view_permission(request),
            "has_add_permission": self.has_add_permission(request),
            "has_change_permission": self.has_change_permission(request),
            "has_delete_permission": self.has_delete_permission(request),
            "has_run_permission": self.has_run_permission(request),
        }

    # ------------------------------------------------------------------ the list

    @store_errors
    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        self.require(request, "view")
        # The entries alone (one round trip) are filtered; state is read for the page shown.
        entries = schedules().entries()
        query = Query.of(request.GET)
        matched = query.apply(entries)
        if request.method == "POST":
            return self._bulk(request, matched)
        page = Paginator(matched, self.list_per_page).get_page(request.GET.get(PAGE))
        actions = [
            (name, label) for name, (label, need) in ACTIONS.items() if self.allowed(request, need)
        ]
        action_form = helpers.ActionForm(auto_id=False)
        action_field = action_form.fields["action"]
        assert isinstance(action_field, forms.ChoiceField)
        action_field.choices = [("", "---------"), *actions]
        context = {
            **self.context(request, "Schedules"),
            "rows": [pages.Row.of(view) for view in self._views(page)],
            "page": page,
            "previous_link": query.link(p=str(page.number - 1)) if page.has_previous() else None,
            "next_link": query.link(p=str(page.number + 1)) if page.has_next() else None,
            "query": query,
            "search_var": SEARCH,
            "filters": query.filters(entries),
            "clear_filters": query.without_filters() if query.has_filters else None,
            "total": len(entries),
            "action_form": action_form if actions else None,
            "actions_selection_counter": True,
            "cl": {"result_list": page.object_list, "result_count": len(matched)},
            "selection_note": f"0 of {len(page.object_list)} selected",
            "selection_note_all": f"All {len(matched)} selected",
            "module_name": "schedules",
            **(extra_context or {}),
        }
        return TemplateResponse(request, TEMPLATES + "change_list.html", context)

    def _bulk(self, request: HttpRequest, matched: list[ScheduleEntry]) -> HttpResponse:
        action = request.POST.get("action", "")
        if action not in ACTIONS:
            messages.warning(request, "No action selected.")
            return HttpResponseRedirect(request.get_full_path())
        self.require(request, ACTIONS[action][1])
        if request.POST.get("select_across") == "1":
            names = [entry.name for entry in matched]
        else:
            names = request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
        if not names:
            messages.warning(
                request,
                "Items must be selected in order to perform actions on them. "
                "No items have been changed.",
            )
            return HttpResponseRedirect(request.get_full_path())
        done, failed = [], []
        for name in names:
            try:
                done.append(self._act(request, action, name))
            except (ScheduleError, BrokerUnavailableError) as exc:
                failed.append(f"{name}: {exc}")
        if done:
            messages.success(request, pages.done_message(action, done))
        for problem in failed:
            messages.error(request, problem)
        return HttpResponseRedirect(request.get_full_path())

    def _act(self, request: HttpRequest, action: str, name: str) -> str:
        """Do one action on one entry as the request's user; what to report of it."""
        manager = schedules()
        who = actor(request)
        if action == "enable":
            manager.enable(name, actor=who)
        elif action == "disable":
            manager.disable(name, actor=who)
        else:
            return f"{name} (task {manager.run_now(name, actor=who)})"
        return name

    # ------------------------------------------------------------------ one entry

    @store_errors
    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """The entry's page: its settings, state, run history and audit trail, and buttons."""
        self.require(request, "view")
        view = self._view(object_id)
        manager = schedules()
        context = {
            **self.context(request, view.entry.name),
            **pages.detail(view, manager.history(object_id), manager.audit(object_id)),
            "editable": view.entry.source == "api",
            **(extra_context or {}),
        }
        return TemplateResponse(request, TEMPLATES + "detail.html", context)

    @store_errors
    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        self.require(request, "add")
        return pages.form_page(self, request, None)

    @store_errors
    def edit_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        self.require(request, "change")
        view = self._view(object_id)
        if view.entry.source != "api":
            raise PermissionDenied  # read-only here: change it where it is managed
        return pages.form_page(self, request, view.entry)

    @store_errors
    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        self.require(request, "delete")
        view = self._view(object_id)
        if view.entry.source != "api":
            raise PermissionDenied
        if request.method == "POST":
            try:
                schedules().remove(object_id, actor=actor(request))
            except ScheduleNotFoundError:
                raise Http404(f"No schedule {object_id!r}.") from None
            messages.success(request, f"The schedule “{object_id}” was deleted.")
            return HttpResponseRedirect(self.url("changelist"))
        context = {**self.context(request, "Are you sure?"), "entry": view.entry}
        return TemplateResponse(request, TEMPLATES + "delete_confirmation.html", context)

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # The audit trail (admin, CLI and API alike) is on the entry's own page.
        return HttpResponseRedirect(self.url("change", object_id))

    def enable_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._button(request, object_id, "enable")

    def disable_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._button(request, object_id, "disable")

    def run_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._button(request, object_id, "run_now")

    @store_errors
    def _button(self, request: HttpRequest, object_id: str, action: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        self.require(request, ACTIONS[action][1])
        try:
            done = self._act(request, action, object_id)
        except ScheduleNotFoundError:
            raise Http404(f"No schedule {object_id!r}.") from None
        except (ScheduleError, BrokerUnavailableError) as exc:  # run now: the broker is down
            messages.error(request, str(exc))
        else:
            messages.success(request, pages.done_message(action, [done]))
        return HttpResponseRedirect(self.url("change", object_id))

    def _views(self, entries: Iterable[ScheduleEntry]) -> list[EntryView]:
        """The entries with their state and next run; one removed meanwhile is left out."""
        return schedules().list(names=[entry.name for entry in entries])

    def _view(self, name: str) -> EntryView:
        try:
            return schedules().show(name)
        except ScheduleNotFoundError:
            raise Http404(f"No schedule {name!r}.") from None
