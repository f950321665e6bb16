"""Fixtures shared by every test: a clean environment and the brokers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

INTEGRATION = Path(__file__).parent / "integration"
UNIT = Path(__file__).parent / "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration is an integration test, marked or not; nothing under
    tests/unit may be one. ``make unit`` and ``make integration`` select by this marker."""
    for item in items:
        path = Path(item.path)
        if path.is_relative_to(INTEGRATION):
            item.add_marker(pytest.mark.integration)
        elif path.is_relative_to(UNIT) and item.get_closest_marker("integration"):
            raise pytest.UsageError(f"{item.nodeid}: a unit test needs no servers; move it")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings come from arguments in tests; a developer's shell must not leak in. What CI
    # requires of the machine (TASKLANE_REQUIRE_*) is not a setting and stays.
    for name in list(os.environ):
        if name.startswith("TASKLANE_REQUIRE_"):
            continue
        if name.startswith("TASKLANE_") or name == "REDIS_URL":
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """Redis at 127.0.0.1:6379, or an embedded Valkey server when none answers there."""
    import redis

    url = "redis://127.0.0.1:6379/9"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.ConnectionError:
        from tasklane_dev.embedded import EmbeddedBroker

        with EmbeddedBroker() as broker:
            yield f"{broker.url}/9"
        return
    yield url
