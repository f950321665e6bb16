"""The WSGI application (``gunicorn quickstart.wsgi``); ``manage.py runserver`` serves it too."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quickstart.settings")

application = get_wsgi_application()
