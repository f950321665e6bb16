"""The project's own fault suite: real notifier workers, real brokers, faults, and a count of
every email at an independent SMTP receiver (``make chaos``, ``python -m tests.chaos``)."""
