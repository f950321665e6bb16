"""Fixtures of the media service's unit tests."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from types import FrameType

import pytest
from billiard.exceptions import SoftTimeLimitExceeded

from media.soft_limit import SOFT_LIMIT_SIGNAL


@pytest.fixture
def soft_limit_handler() -> Iterator[None]:
    """The pool's handler of the soft limit's signal, as billiard installs it in a child."""

    def raise_soft_limit(signum: int, frame: FrameType | None) -> None:
        raise SoftTimeLimitExceeded()

    assert SOFT_LIMIT_SIGNAL is not None
    previous = signal.signal(SOFT_LIMIT_SIGNAL, raise_soft_limit)
    try:
        yield
    finally:
        signal.signal(SOFT_LIMIT_SIGNAL, previous)
