"""Settings of the Tasklane Django quick start: a shop whose orders notify a DingTalk robot and
email the customer through the transactional outbox.

Everything Tasklane needs is the ``TASKLANE`` dict and the app in ``INSTALLED_APPS``; see
docs/django.md. Values a deployment changes come from the environment.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# Development values; a deployment sets DJANGO_SECRET_KEY and DJANGO_DEBUG=0.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-tasklane-quickstart")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "tasklane.contrib.django",  # the outbox table, its admin, the relay command, system checks
    "shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "quickstart.urls"
WSGI_APPLICATION = "quickstart.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# SQLite by default (the relay then polls, and exactly one relay may run: system check
# tasklane.W001). PostgreSQL when PGDATABASE is set: the relay is woken by NOTIFY and any number
# of relays keep each contract's commit order. libpq reads PGHOST, PGPORT, PGUSER and PGPASSWORD.
if os.environ.get("PGDATABASE"):
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.postgresql", "NAME": os.environ["PGDATABASE"]}
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("QUICKSTART_SQLITE", str(BASE_DIR / "db.sqlite3")),
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"

# Tasklane. Keys are the TASKLANE_* variables without the prefix (they win over the variables;
# what is left out, such as NAMESPACE, comes from the environment) and the Django-only keys.
TASKLANE = {
    "BROKER_URL": os.environ.get("TASKLANE_BROKER_URL", "redis://127.0.0.1:6379/0"),
    # publish_on_commit writes a row in the view's transaction; `manage.py tasklane_relay` sends
    # it. An order is never told to a broker that is down, nor left unsent by a crash.
    "OUTBOX": True,
    # What this project publishes; `manage.py check` fails (tasklane.E004) on a name that no
    # contract has.
    "CONTRACTS": ["notifier.im.send", "notifier.email.send"],
}

# The DingTalk robot of the shop's group chat. The robot's signing secret is never here: the
# notifier holds it (TASKLANE_NOTIFIER_SECRETS='{"dingtalk-orders": "SEC…"}') and signs each
# message; the payload only names it.
DINGTALK_ROBOT_URL = os.environ.get(
    "DINGTALK_ROBOT_URL", "https://oapi.dingtalk.com/robot/send?access_token=REPLACE_ME"
)
DINGTALK_SECRET_REF = "dingtalk-orders"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    # The relay's progress and outages (broker unavailable, back-off, parked rows).
    "loggers": {"tasklane": {"handlers": ["console"], "level": "INFO"}},
}
