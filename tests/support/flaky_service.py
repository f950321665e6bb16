"""A test-only worker service whose contracts exercise retry exhaustion and time limits.

Run as ``celery -A tests.support.flaky_service worker``; settings come from the environment.
"""

from __future__ import annotations

import time

import redis
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker.control import control_command

from tasklane.errors import TransientError
from tasklane.settings import load_settings
from tasklane.worker.app import create_app
from tests.support.flaky_contracts import (
    ALWAYS_FAILS,
    FLAKY_REGISTRY,
    SLOW,
    FlakyPayload,
    FlakyResult,
)

settings = load_settings()
app = create_app("flaky", settings=settings, registry=FLAKY_REGISTRY)


def record_dead_letter(payload: FlakyPayload, exc: Exception) -> None:
    """The dead-letter hook: lists what was given up, by label, for the tests to read."""
    client = redis.Redis.from_url(settings.require_state())
    client.rpush(f"{settings.namespace}flaky:dead", f"{payload.label}:{type(exc).__name__}")


@app.implement(ALWAYS_FAILS, on_dead_letter=record_dead_letter)
def always_fail(payload: FlakyPayload) -> FlakyResult:
    """Fails transiently on every attempt."""
    raise TransientError(f"{payload.label}: upstream unavailable")


@app.implement(SLOW, on_dead_letter=record_dead_letter)
def slow(payload: FlakyPayload) -> FlakyResult:
    """Sleeps past the soft (and, ignoring it, the hard) time limit when asked to."""
    deadline = time.monotonic() + payload.sleep
    while time.monotonic() < deadline:
        try:
            time.sleep(deadline - time.monotonic())
        except SoftTimeLimitExceeded:
            if not payload.ignore_soft_limit:
                raise
    return FlakyResult(label=payload.label)


@control_command(args=[("seconds", float)], signature="<seconds>")  # type: ignore[untyped-decorator]
def hang(state: object, seconds: float = 5.0) -> dict[str, str]:
    """A remote-control command that blocks the worker's main loop (health probe tests)."""
    time.sleep(seconds)
    return {"ok": f"hung for {seconds}s"}
