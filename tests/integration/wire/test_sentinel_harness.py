"""``SentinelGroup`` does what failover tests rely on: a killed master is replaced, a Sentinel
client follows, the old master comes back as a replica, and nothing outlives ``close``."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu.connection import Connection
from redis.sentinel import Sentinel

from tests.support import eventually
from tests.support.sentinel import SentinelGroup

# The group's own waits (start, failover, restart, resync) add up to more than pytest's default
# timeout: a slow run on busy cores must end with their diagnostics, not be cut off before.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

KEYS = {f"key-{index}": f"value-{index}" for index in range(100)}


def alive(pid: int) -> bool:
    """Some process of the group ``pid`` led (each server runs in a session of its own)."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def master_for(group: SentinelGroup, **kwargs: Any) -> redis.Redis:
    """A client of the group's master found through ``redis.sentinel.Sentinel``, as production
    finds it; ``kwargs`` go to ``Sentinel`` (passwords)."""
    sentinel = Sentinel(group.sentinel_addresses, socket_timeout=5, **kwargs)  # type: ignore[no-untyped-call]
    client: redis.Redis = sentinel.master_for(group.master_name, socket_timeout=5)  # type: ignore[no-untyped-call]
    return client


def test_a_killed_master_is_replaced_and_comes_back_as_a_replica(tmp_path: Path) -> None:
    with SentinelGroup(tmp_path) as group:
        client = master_for(group)
        client.mset(KEYS)
        assert client.wait(1, 5000) == 1, "the replica did not ack the writes"

        old = group.kill_master()
        new = group.wait_for_failover(old)
        assert new != old
        assert group.master() == new

        # A Sentinel a moment behind may still name the old master: redis-py's client then
        # fails to connect until it asks one that has seen the failover.
        def reads_new_master() -> bool:
            port: int = client.info("server")["tcp_port"]
            return port == new[1] and client.mget(list(KEYS)) == [v.encode() for v in KEYS.values()]

        eventually(
            reads_new_master,
            timeout=30,
            message=f"the master_for client to read the keys from {new}",
            ignoring=(redis.ConnectionError, redis.TimeoutError),
        )

        group.restart(old[1])
        group.wait_for_replica(old, new)
        with group.server_client(old) as restarted:
            eventually(
                lambda: restarted.dbsize() == len(KEYS),
                timeout=30,
                message=lambda: f"{len(KEYS)} keys on {old}, not {restarted.dbsize()}",
            )
        client.close()
        pids = group.pids()
        killed = pids[0]  # the first master's first process
        assert len(pids) == 6  # two servers, three Sentinels, one restart
        assert [pid for pid in pids if alive(pid)] == [pid for pid in pids if pid != killed]
    assert [pid for pid in pids if alive(pid)] == []


def test_passwords_reach_redis_sentinels_kombu_and_celery(tmp_path: Path) -> None:
    with SentinelGroup(
        tmp_path, password="redis secret", sentinel_password="sentinel secret"
    ) as group:
        for address in (group.master(), group.sentinel_addresses[0]):
            with redis.Redis(*address) as anonymous, pytest.raises(redis.AuthenticationError):
                anonymous.ping()

        options = group.transport_options()
        assert options == {
            "master_name": "tasklane",
            "sentinel_kwargs": {"password": "sentinel secret"},
        }
        queue = f"sentinel-{uuid.uuid4().hex[:8]}"
        with Connection(group.broker_url(), transport_options=options) as connection:
            connection.SimpleQueue(queue).put({"n": 1})
        app = Celery("sentinel-test", set_as_current=False)
        app.conf.result_backend = group.broker_url(db=1)
        app.conf.result_backend_transport_options = options
        task_id = str(uuid.uuid4())
        app.backend.store_result(task_id, {"ok": True}, "SUCCESS")
        app.close()

        client = master_for(
            group, sentinel_kwargs={"password": "sentinel secret"}, password="redis secret"
        )
        # WAIT counts this connection's writes: the replica acking a later one has the earlier
        # ones of Kombu and Celery too.
        client.set("marker", 1)
        assert client.wait(1, 5000) == 1, "the replica did not ack the writes"

        # Sentinels need ``auth-pass`` to promote the replica.
        new = group.wait_for_failover(group.kill_master())

        with Connection(group.broker_url(), transport_options=options) as connection:
            simple = connection.SimpleQueue(queue)
            message = simple.get(timeout=30)
            assert message.payload == {"n": 1}
            message.ack()
            simple.close()
        later = Celery("sentinel-test", set_as_current=False)
        later.conf.result_backend = group.broker_url(db=1)
        later.conf.result_backend_transport_options = options
        assert later.backend.get_task_meta(task_id)["result"] == {"ok": True}
        later.close()
        eventually(
            lambda: client.info("server")["tcp_port"] == new[1],
            timeout=30,
            message=f"the master_for client to reach {new}",
            ignoring=(redis.ConnectionError, redis.TimeoutError),
        )
        client.close()
        pids = group.pids()
    assert [pid for pid in pids if alive(pid)] == []
