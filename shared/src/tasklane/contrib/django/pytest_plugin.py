"""The ``tasklane_published`` pytest fixture.

Enable it with ``pytest_plugins = ["tasklane.contrib.django.pytest_plugin"]`` in a conftest.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tasklane.contrib.django.testing import Published, capture_publishes


@pytest.fixture
def tasklane_published() -> Iterator[list[Published]]:
    """Every publish the test makes, captured (see ``capture_publishes``); none reaches a broker."""
    with capture_publishes() as published:
        yield published
