"""The app ``tasklane flower`` runs: broker, backend and queues from ``TASKLANE_*`` settings.

Not a worker app: it registers no tasks and consumes nothing; see
:func:`tasklane.observability.flower.create_flower_app`.
"""

from __future__ import annotations

from tasklane.observability.flower import create_flower_app
from tasklane.settings import exit_on_bad_settings

# Under `celery -A`, a bad TASKLANE_* value stops Flower with one line (exit status 2).
with exit_on_bad_settings():
    app = create_flower_app()
