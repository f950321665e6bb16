"""``manage.py tasklane_relay``: the outbox relay."""
