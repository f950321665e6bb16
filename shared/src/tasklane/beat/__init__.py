"""Beat: schedule entries (models, cron), their Redis store, the Python client, the scheduler, the
HTTP API. ``celery -A tasklane.beat beat`` finds the app in :mod:`tasklane.beat.celery`.
"""
