"""The app ``tasklane flower`` runs: broker, backend and queues from ``TASKLANE_*`` settings.

Not a worker app: it registers no tasks and consumes nothing; see
:func:`tasklane.observability.flower.create_flower_app`.
"""

from __future__ import annotations

from tasklane.observability.flower import create_flower_app

app = create_flower_app()
