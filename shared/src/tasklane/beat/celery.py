"""The default app of ``tasklane beat``: broker and time zone from ``TASKLANE_*`` settings.

Schedules come from Redis and the schedule file; a Celery app of your own with a
``beat_schedule`` or ``add_periodic_task`` handlers runs with ``tasklane beat --app module:app``.
"""

from __future__ import annotations

from tasklane.beat.scheduler import create_beat_app

app = create_beat_app()
