"""The notifier's Celery app, run by ``tasklane worker notifier``."""

from __future__ import annotations

from tasklane.worker.app import create_app

app = create_app("notifier")
app.conf.include = ["notifier.tasks"]
