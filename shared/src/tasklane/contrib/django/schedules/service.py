"""The process's one :class:`~tasklane.beat.client.Schedules`, built from the ``TASKLANE`` setting.

Made on first use (a project that never opens the pages connects to nothing), shared by every
request thread, and closed when the ``TASKLANE`` setting changes (tests), like the conf cache.
"""

from __future__ import annotations

import threading

from django.core.signals import setting_changed
from django.http import HttpRequest

from tasklane.beat.client import Schedules
from tasklane.beat.models import Actor
from tasklane.contrib.django.conf import SETTING, options

_lock = threading.Lock()
_schedules: Schedules | None = None


def schedules() -> Schedules:
    """The shared ``Schedules`` over the settings and registry of ``TASKLANE``.

    Raises:
        ImproperlyConfigured: the ``TASKLANE`` setting is invalid.
        SettingsError: no Redis is configured for Beat's store (``RESULT_BACKEND`` or
            ``STATE_URL``, or a Redis ``BROKER_URL``).
    """
    global _schedules
    with _lock:
        if _schedules is None:
            config = options()
            _schedules = Schedules(config.settings, registry=config.registry)
        return _schedules


def close() -> None:
    """Close the shared ``Schedules``, if one was made; the next call makes a new one."""
    global _schedules
    with _lock:
        current, _schedules = _schedules, None
    if current is not None:
        current.close()


def actor(request: HttpRequest) -> Actor:
    """Who makes a change from the admin, as the audit trail records it."""
    return Actor(via="admin", who=request.user.get_username())


def _forget(*, setting: str, **_: object) -> None:
    if setting == SETTING:
        close()


setting_changed.connect(_forget, dispatch_uid="tasklane.contrib.django.schedules.service")
