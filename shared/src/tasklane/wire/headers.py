"""Every ``x-tasklane-*`` message header, in one place.

A header a worker sets for itself (``BUSY_WAITS``) is internal; the rest describe a message to
operators and other languages (docs/protocol.md).
"""

from __future__ import annotations

#: The publish time (Unix seconds), for queue-wait measurements.
PUBLISHED_AT = "x-tasklane-published-at"
#: The schedule entry a message was published for (Beat and run-now).
SCHEDULE = "x-tasklane-schedule"
#: The slot (ISO 8601) a message was published for; absent for run-now.
SLOT = "x-tasklane-slot"
#: Retries spent waiting for another delivery of the same idempotency key.
BUSY_WAITS = "x-tasklane-busy-waits"

#: Headers Tasklane adds to a dead-lettered message. Replay removes them.
REASON = "x-tasklane-reason"
ERROR_TYPE = "x-tasklane-error-type"
ERROR = "x-tasklane-error"
ATTEMPTS = "x-tasklane-attempts"
FAILED_AT = "x-tasklane-failed-at"
ORIGINAL_QUEUE = "x-tasklane-queue"
WORKER = "x-tasklane-worker"
DEAD_LETTER_HEADERS = (REASON, ERROR_TYPE, ERROR, ATTEMPTS, FAILED_AT, ORIGINAL_QUEUE, WORKER)

#: The prefix of them all: a dead letter keeps the original's headers of this prefix.
PREFIX = "x-tasklane-"
