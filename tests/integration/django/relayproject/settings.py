"""Settings of the relay tests' project, from the environment the test gives the process.

``RELAYPROJECT_DATABASE`` (the test's PostgreSQL database), ``RELAYPROJECT_DATABASE_PORT``
(a proxy's port, to cut the database), ``RELAYPROJECT_POLL_INTERVAL``; the broker comes from
``TASKLANE_*``. ``RELAYPROJECT_HOOK`` names a directory where every send is logged, and with
``RELAYPROJECT_STALL=1`` the first one stalls (:mod:`tests.integration.django.relayproject.hooks`).
"""

from __future__ import annotations

import os

SECRET_KEY = "tasklane-relay-tests"
USE_TZ = True
INSTALLED_APPS = ["tasklane.contrib.django"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ["RELAYPROJECT_DATABASE"],
        "HOST": "127.0.0.1",
        "PORT": os.environ.get("RELAYPROJECT_DATABASE_PORT", "5432"),
        "USER": "postgres",
        # A cut database is noticed at once rather than after the kernel's retries.
        "OPTIONS": {"connect_timeout": 2},
    }
}
TASKLANE = {
    "OUTBOX": True,
    "RELAY_POLL_INTERVAL": float(os.environ.get("RELAYPROJECT_POLL_INTERVAL", "1")),
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"tasklane": {"handlers": ["console"], "level": "INFO"}},
}

if os.environ.get("RELAYPROJECT_HOOK"):
    from tests.integration.django.relayproject import hooks

    hooks.install(
        os.environ["RELAYPROJECT_HOOK"], stall=os.environ.get("RELAYPROJECT_STALL") == "1"
    )
