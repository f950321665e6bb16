"""What a long-lived Publisher holds of a Redis broker: the pushes of many publishes go over one
connection of Kombu's pool, and closing the publisher closes every connection it opened.

The test counts connections at the server, so it runs a ``redis-server`` of its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tasklane import Publisher
from tasklane.contracts.notifier import SEND_EMAIL
from tasklane.settings import Settings
from tests.support import eventually
from tests.support.harness import RedisServer

pytestmark = pytest.mark.integration

EMAIL = {"to": ["someone@example.com"], "subject": "connections", "text": "one is enough"}


def _other_clients(checker: redis.Redis) -> list[str]:
    mine = checker.client_id()
    return [str(client["addr"]) for client in checker.client_list() if client["id"] != str(mine)]


def test_many_publishes_share_one_connection_and_closing_the_publisher_closes_it(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path).start()
    try:
        checker = redis.Redis.from_url(server.url)
        settings = Settings(broker_url=server.url, result_backend=server.url, namespace="conn.")
        with Publisher(settings) as publisher:
            accepted = int(checker.info("stats")["total_connections_received"])
            for _ in range(100):
                publisher.publish(SEND_EMAIL, EMAIL)
            publisher.publish_many(SEND_EMAIL, [EMAIL] * 100, batch_size=10)
            opened = int(checker.info("stats")["total_connections_received"]) - accepted
            held = _other_clients(checker)

        # Kombu's channel declares queues from one pool and publishes from another: one
        # connection each, whatever the number of publishes.
        assert opened == 2
        assert len(held) == 2
        eventually(
            lambda: not _other_clients(checker), timeout=10, message="a connection left open"
        )
    finally:
        server.kill()
