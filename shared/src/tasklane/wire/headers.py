"""Every ``x-tasklane-*`` message header, in one place.

A publisher sets the describing headers; the dead-letter headers are the worker's alone, and a
publisher may not send them (docs/protocol.md). What a worker counts for itself (waits for another
delivery's idempotency claim) lives in its state store, never in a header an upstream could forge.
"""

from __future__ import annotations

#: The publish time (Unix seconds), for queue-wait measurements.
PUBLISHED_AT = "x-tasklane-published-at"
#: The schedule entry a message was published for (Beat and run-now).
SCHEDULE = "x-tasklane-schedule"
#: The slot (ISO 8601) a message was published for; absent for run-now.
SLOT = "x-tasklane-slot"

#: Headers Tasklane adds to a dead-lettered message. Replay removes them.
REASON = "x-tasklane-reason"
ERROR_TYPE = "x-tasklane-error-type"
ERROR = "x-tasklane-error"
ATTEMPTS = "x-tasklane-attempts"
FAILED_AT = "x-tasklane-failed-at"
ORIGINAL_QUEUE = "x-tasklane-queue"
WORKER = "x-tasklane-worker"
DEAD_LETTER_HEADERS = (REASON, ERROR_TYPE, ERROR, ATTEMPTS, FAILED_AT, ORIGINAL_QUEUE, WORKER)

#: The ``x-tasklane-*`` headers a publisher may set itself (Beat sets the schedule ones).
PUBLISHER_HEADERS = (PUBLISHED_AT, SCHEDULE, SLOT)

#: The prefix of them all: a dead letter keeps the original's headers of this prefix.
PREFIX = "x-tasklane-"
