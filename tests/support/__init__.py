"""What tests share beyond fixtures: one way to wait for something to happen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def eventually(
    check: Callable[[], T | None],
    *,
    timeout: float,
    message: str | Callable[[], str],
    interval: float = 0.05,
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """Call ``check`` until it returns something truthy, and return that.

    ``check`` is called at least once, and once more when ``timeout`` seconds have passed, so a
    slow sleep never costs the last look. An exception of a type in ``ignoring`` (a server not
    listening yet) counts as "not yet"; any other ends the wait at once.

    Args:
        message: what is waited for, named in the failure; a callable is asked only then, so
            it can add what the system shows at that moment (a log, the items seen).

    Raises:
        pytest.fail.Exception: nothing truthy came within ``timeout``; the failure names what
            was waited for and the last value or exception ``check`` gave.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except ignoring as exc:
            last = f"last exception: {type(exc).__name__}: {exc}"
        else:
            if value:
                return value
            last = f"last value: {value!r}"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            what = message() if callable(message) else message
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}; {last}")
        time.sleep(min(interval, remaining))
