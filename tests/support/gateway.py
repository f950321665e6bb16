"""A real ``tasklane gateway`` process on a free port, its tokens file, and queue reading."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tasklane.contracts import REGISTRY
from tasklane.gateway.tokens import token_hash
from tasklane.wire.queues import queue_depths
from tasklane_dev.sinks import free_port
from tests.support import eventually
from tests.support.harness import BrokerEnv, stop_process_group


def publisher_entry(
    name: str, token: str, contracts: list[str], rate: float = 1000.0, burst: int = 5000
) -> dict[str, Any]:
    """One publisher of a tokens file, for ``token``."""
    return {
        "name": name,
        "token_sha256": token_hash(token),
        "contracts": contracts,
        "rate": rate,
        "burst": burst,
    }


def write_tokens(path: Path, entries: list[dict[str, Any]]) -> Path:
    """A tokens file (JSON, which the gateway reads as YAML does)."""
    path.write_text(json.dumps({"publishers": entries}), encoding="utf-8")
    return path


def waiting(broker: BrokerEnv, queue: str) -> int:
    """Messages waiting in the work queue ``queue`` (``notifier.email``) of the namespace."""
    name = broker.namespace + queue
    depths = queue_depths(broker.settings, REGISTRY)
    return sum(d.messages for d in depths if d.name == name)


class GatewayProcess:
    """``tasklane gateway`` in a session of its own, serving on 127.0.0.1 and a free port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_file = log.open("ab")
        full_env = {
            **os.environ,
            "TASKLANE_GATEWAY_HOST": "127.0.0.1",
            "TASKLANE_GATEWAY_PORT": str(self.port),
            **env,
        }
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("tasklane")), "gateway"],
            env=full_env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> GatewayProcess:
        """Until ``/readyz`` answers 200 (Redis and the broker answered)."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited:\n{self.output()}")
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200

        eventually(
            ready,
            timeout=timeout,
            interval=0.1,
            message=lambda: f"the gateway ready; log:\n{self.output()}",
            ignoring=(httpx.TransportError,),
        )
        return self

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def terminate(self) -> None:
        """SIGTERM the gateway alone (not waiting)."""
        os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self) -> None:
        stop_process_group(self.process)
        self._log_file.close()
