"""The Redis stores a command needs besides the broker, or one error naming what to set.

Every message starts from the broker, as ``no broker configured`` does for the queue commands:
with no broker at all the user must set ``TASKLANE_BROKER_URL`` first, and only with a broker
that is not Redis the store's own variable. Messages: docs/operations.md#errors.
"""

from __future__ import annotations

from tasklane.beat.client import Schedules
from tasklane.errors import SettingsError
from tasklane.settings import Settings, load_settings


def _not_redis(settings: Settings, what: str, variables: str) -> SettingsError:
    broker = settings.require_broker()  # no broker at all: its own message comes first
    scheme = broker.partition(":")[0]
    return SettingsError(
        f"{what} need Redis and the broker is {scheme}://, not Redis: set {variables}"
    )


def require_state(settings: Settings) -> str:
    """The Redis URL of Beat's schedules (the state store).

    Raises:
        SettingsError: no broker is configured, or a broker that is not Redis and no store.
    """
    if settings.state_url is None:
        raise _not_redis(settings, "schedules", "TASKLANE_STATE_URL (or TASKLANE_RESULT_BACKEND)")
    return settings.state_url


def require_results(settings: Settings) -> str:
    """The result backend's URL.

    Raises:
        SettingsError: no broker is configured, or a broker that is not Redis and no backend.
    """
    if settings.result_backend is None:
        raise _not_redis(settings, "task results", "TASKLANE_RESULT_BACKEND")
    return settings.result_backend


def open_schedules() -> Schedules:
    """:class:`Schedules` on the environment's settings, checked by :func:`require_state` first.

    Raises:
        SettingsError: as :func:`require_state`.
    """
    settings = load_settings()
    require_state(settings)
    return Schedules(settings)
