"""The wire: Celery protocol v2 messages, queue names and routing, broker connections, DLQs.

What every process that touches the broker shares: the publisher, workers, Beat and the CLI.
"""
