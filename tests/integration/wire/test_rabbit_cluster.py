"""A quorum queue keeps every confirmed message when the node leading it is killed.

The throwaway cluster of tests/support/rabbit_cluster.py is checked here end to end: three
nodes join, a hard-killed node's queue fails over to the survivors, the node comes back into
the cluster, and ``close`` leaves no process behind.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.messaging import Producer

from tests.support import eventually
from tests.support.rabbit_cluster import RabbitCluster

# Three broker nodes start, die and start again beside the rest of the suite: minutes, not seconds.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MESSAGES = 100


def quorum_queue(name: str) -> Queue:
    return Queue(name, durable=True, queue_arguments={"x-queue-type": "quorum"})


def drain(url: str, name: str, seen: set[int]) -> bool:
    """Take and ack what ``name`` holds through ``url`` into ``seen``; True once all are in.

    A broker error (the queue still electing a new leader) propagates, so the caller retries.
    """
    # read_timeout: a basic.get the broker never answers fails instead of hanging the test.
    with Connection(url, connect_timeout=5, transport_options={"read_timeout": 15}) as conn:
        queue = quorum_queue(name)(conn.channel())
        while len(seen) < MESSAGES:
            message = queue.get(no_ack=False)
            if message is None:
                break
            seen.add(json.loads(message.body)["n"])
            message.ack()
    return len(seen) == MESSAGES


def cluster_ps_lines(cluster: RabbitCluster) -> list[str]:
    ps = subprocess.run(
        ["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True
    )
    return [line for line in ps.stdout.splitlines() if any(n in line for n in cluster.node_names)]


def test_quorum_queue_survives_its_leader_killed(tmp_path: Path) -> None:
    name = "tl-failover"
    cluster = RabbitCluster(tmp_path)
    with cluster:
        assert cluster.running_nodes() == [0, 1, 2]
        with Connection(cluster.url(0), transport_options={"confirm_publish": True}) as conn:
            channel = conn.channel()
            quorum_queue(name)(channel).declare()
            producer = Producer(channel)
            for n in range(MESSAGES):  # each publish returns once the broker confirmed it
                producer.publish({"n": n}, routing_key=name, serializer="json", delivery_mode=2)

        leader = cluster.queue_leader(name)
        cluster.kill_node(leader)
        survivor = next(i for i in range(3) if i != leader)

        seen: set[int] = set()
        transport = Connection(cluster.url(survivor))  # lazy: only for its error classes
        eventually(
            lambda: drain(cluster.url(survivor), name, seen),
            timeout=120,
            interval=1.0,
            message=lambda: f"{MESSAGES} messages from node {survivor}, not {len(seen)}",
            ignoring=(OSError, *transport.connection_errors, *transport.channel_errors),
        )
        assert seen == set(range(MESSAGES))

        cluster.start_node(leader)
        assert cluster.running_nodes() == [0, 1, 2]
        assert cluster_ps_lines(cluster), "the nodes' VMs name their node on the command line"

    assert cluster_ps_lines(cluster) == []
    assert cluster.processes() == []
