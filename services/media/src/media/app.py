"""The media service's Celery app, run by ``tasklane worker media``."""

from __future__ import annotations

from typing import Any

from celery.signals import task_postrun, worker_init

from media.settings import MediaSettings
from media.soft_limit import release_after_run
from media.workspace import remove_stale
from tasklane.contracts import REGISTRY
from tasklane.settings import exit_on_bad_settings, load
from tasklane.worker.app import create_app

# Under `celery -A`, a bad TASKLANE_* value stops the start with one line (exit status 2).
with exit_on_bad_settings():
    app = create_app("media")
    load(MediaSettings)  # media.tasks reads them too, later: checked before the worker starts
app.conf.include = ["media.tasks"]


def _remove_stale_workspaces(**_: Any) -> None:
    # Older than the longest hard time limit: no task of this service can still be using them.
    longest = max(contract.time_limit for contract in REGISTRY.for_service("media"))
    remove_stale(load(MediaSettings).work_dir, older_than=longest)


worker_init.connect(_remove_stale_workspaces, weak=False)
# A transcode that stopped itself ignores the pool's later signal until it has ended.
task_postrun.connect(release_after_run, weak=False)
