"""The scraper's Celery app, run by ``tasklane worker scraper``."""

from __future__ import annotations

from tasklane.worker.app import create_app

app = create_app("scraper")
app.conf.include = ["scraper.tasks"]
