"""The contract of the echo task a plain Celery worker runs (``plain_celery_service``)."""

from __future__ import annotations

from tasklane.contracts import Payload, Result, TaskContract


class EchoPayload(Payload):
    """What the plain worker echoes back."""

    n: int
    text: str


class EchoResult(Result):
    """Never built by the plain worker: its result is Celery's plain JSON."""

    n: int
    text: str


PLAIN_ECHO = TaskContract(
    name="tests.plain.echo",
    queue="tests.plain",
    payload=EchoPayload,
    result=EchoResult,
    description="Echoed by a plain Celery worker.",
    priority=4,
)
