"""The scraper's Celery app, run by ``tasklane worker scraper``."""

from __future__ import annotations

from scraper.settings import ScraperSettings
from tasklane.settings import exit_on_bad_settings, load
from tasklane.worker.app import create_app

# Under `celery -A`, a bad TASKLANE_* value stops the start with one line (exit status 2).
with exit_on_bad_settings():
    app = create_app("scraper")
    load(ScraperSettings)  # scraper.tasks reads them too, later: checked before the worker starts
app.conf.include = ["scraper.tasks"]
