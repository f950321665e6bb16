"""Beat's schedules in Django's admin, read and changed through the Python schedules API.

Nothing is copied into the database: the pages read Beat's store (Redis) through
:class:`tasklane.beat.client.Schedules`, so what they show is what Beat fires.
Design: docs/django.md#schedules-in-the-admin.
"""
