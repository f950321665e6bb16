"""The default app of ``tasklane beat``: broker and time zone from ``TASKLANE_*`` settings.

Schedules come from Redis and the schedule file; a Celery app of your own with a
``beat_schedule`` or ``add_periodic_task`` handlers runs with ``tasklane beat --app module:app``.
"""

from __future__ import annotations

from tasklane.beat.scheduler import BeatSettings, create_beat_app
from tasklane.settings import exit_on_bad_settings, load

# Under `celery -A`, a bad TASKLANE_* value stops Beat with one line (exit status 2): checked here,
# not where the scheduler reads them once Beat runs (a traceback in Beat's log).
with exit_on_bad_settings():
    app = create_beat_app()
    app.settings.require_state()
    load(BeatSettings)
