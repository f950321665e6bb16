"""The chart's worker commands and its `helm test` pod, run for real against Redis.

Each rendered pool Deployment's command starts a real worker (`tasklane` from this environment
instead of the image's; concurrency 1 to spare the machine); then every container of the rendered
`helm test` pod runs its command. Each must exit 0 with a pong from the pool that consumes its
queue: the chart's queue layout, the `--queues` option and the ping contracts fit together.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import Rendered, render
from tests.support.harness import BrokerEnv, WorkerProcess, cleanup

pytestmark = pytest.mark.integration

TASKLANE = str(Path(sys.executable).with_name("tasklane"))
#: Per-pod settings that would collide between workers on one machine, or need a collector.
LOCAL_ONLY = ("TASKLANE_METRICS_PORT", "PROMETHEUS_MULTIPROC_DIR")


def _plain_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's literal variables (secret references are the broker's, given below)."""
    return {
        entry["name"]: str(entry["value"])
        for entry in container.get("env", [])
        if "value" in entry
        and entry["name"] not in LOCAL_ONLY
        and not entry["name"].startswith("OTEL_")
    }


def _local(command: list[str]) -> list[str]:
    assert command[0] == "tasklane", command
    return [TASKLANE, *command[1:]]


@pytest.fixture
def broker(redis_url: str) -> Iterator[BrokerEnv]:
    env = BrokerEnv("redis", redis_url, redis_url, f"t{uuid.uuid4().hex[:10]}.")
    yield env
    cleanup(env)


def test_every_pool_answers_the_helm_test_pings(
    chart: Any, broker: BrokerEnv, tmp_path: Path
) -> None:
    pools = list(Rendered("default", {}, {}, render(chart, {})).pools())
    values = {
        "tasklane": {"namespace": broker.namespace},
        "workers": {"pools": {name: {"concurrency": 1} for name in pools}},
    }
    rendered = Rendered("local", values, {}, render(chart, values))
    deployments = list(rendered.pools().values())
    (test_pod,) = rendered.kind("Pod")
    assert len(deployments) == len(pools) == 5

    workers: list[WorkerProcess] = []
    try:
        for deployment in deployments:
            (container,) = deployment["spec"]["template"]["spec"]["containers"]
            name = deployment["metadata"]["labels"]["tasklane.io/pool"]
            env = {**_plain_env(container), **broker.env()}
            command = _local(container["command"])
            workers.append(WorkerProcess.from_command(command, env, tmp_path / f"{name}.log"))
        for worker in workers:
            worker.wait_ready(60)

        runs = {}
        for container in test_pod["spec"]["containers"]:
            env = {**_plain_env(container), **broker.env()}
            runs[container["name"]] = subprocess.Popen(
                _local(container["command"]),
                env={**os.environ, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        answers = {name: run.communicate(timeout=90) for name, run in runs.items()}
        for name, run in runs.items():
            output = answers[name][0]
            assert run.returncode == 0, f"{name}: {output}"
            assert json.loads(output[output.index("{") :])["pong"] is True, output
        # One container per queue of every pool: seven queues today.
        assert len(runs) == 7
    finally:
        for worker in workers:
            worker.stop()
