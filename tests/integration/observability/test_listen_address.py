"""Where the metrics and probe server listens: ``TASKLANE_METRICS_ADDRESS``.

Linux routes all of 127.0.0.0/8 to the loopback interface, so 127.0.0.2 stands for "another
address of this host" on any machine: a server bound to 127.0.0.1 refuses it, one bound to
0.0.0.0 answers it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tasklane.errors import SettingsError
from tasklane.observability.health import WorkerHealth
from tasklane.observability.metrics import serve_endpoints
from tasklane.settings import Settings, load_settings
from tasklane_dev.sinks import free_port
from tests.support import eventually
from tests.support.harness import BrokerEnv, WorkerProcess


def _answers(host: str, port: int) -> bool:
    url = f"http://{host}:{port}/livez"
    try:
        urllib.request.urlopen(url, timeout=5).read()
    except urllib.error.HTTPError:
        return True  # an answer, whatever its status
    except OSError:
        return False
    return True


def test_the_default_address_takes_every_interface() -> None:
    assert str(Settings().metrics_address) == "0.0.0.0"
    port = free_port()
    server = serve_endpoints(port, CollectorRegistry(), WorkerHealth(live_timeout=30))
    try:
        assert _answers("127.0.0.1", port)
        assert _answers("127.0.0.2", port)
    finally:
        server.shutdown()
        server.server_close()


def test_a_loopback_address_keeps_the_server_on_it() -> None:
    port = free_port()
    settings = Settings(metrics_address="127.0.0.1")  # type: ignore[arg-type]
    server = serve_endpoints(
        port, CollectorRegistry(), WorkerHealth(live_timeout=30), settings.metrics_address
    )
    try:
        assert _answers("127.0.0.1", port)
        assert not _answers("127.0.0.2", port)
    finally:
        server.shutdown()
        server.server_close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_an_ipv6_address_is_served_over_ipv6() -> None:
    if not _ipv6_loopback():
        pytest.skip("this host has no IPv6 loopback address")
    port = free_port()
    server = serve_endpoints(port, CollectorRegistry(), WorkerHealth(live_timeout=30), "::1")
    try:
        assert _answers("[::1]", port)
        assert not _answers("127.0.0.1", port)
    finally:
        server.shutdown()
        server.server_close()


def test_an_address_that_is_not_an_ip_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKLANE_METRICS_ADDRESS", "every-interface")
    with pytest.raises(SettingsError, match=r"TASKLANE_METRICS_ADDRESS: .*'every-interface'"):
        load_settings()


def test_a_worker_binds_its_metrics_where_the_setting_says(
    redis_broker: BrokerEnv, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **redis_broker.env(),
        "TASKLANE_METRICS_PORT": str(port),
        "TASKLANE_METRICS_ADDRESS": "127.0.0.1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    worker = WorkerProcess("notifier", env, tmp_path / "worker.log", concurrency=1)
    try:
        worker.wait_ready()
        eventually(lambda: _answers("127.0.0.1", port), timeout=20, message=worker.output)
        assert not _answers("127.0.0.2", port)
    finally:
        worker.stop()


def _exporter(env: dict[str, str], *arguments: str) -> subprocess.Popen[bytes]:
    tasklane = str(Path(sys.executable).with_name("tasklane"))
    return subprocess.Popen(
        [tasklane, "exporter", *arguments],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_the_exporter_listens_on_the_metrics_address(redis_broker: BrokerEnv) -> None:
    port = free_port()
    env = {**redis_broker.env(), "TASKLANE_METRICS_ADDRESS": "127.0.0.1"}
    exporter = _exporter(env, "--port", str(port))
    try:
        eventually(lambda: _answers("127.0.0.1", port), timeout=30, message="exporter up")
        assert not _answers("127.0.0.2", port)
    finally:
        exporter.terminate()
        exporter.wait(20)


def test_the_exporter_refuses_an_address_that_is_not_an_ip(redis_broker: BrokerEnv) -> None:
    exporter = _exporter(redis_broker.env(), "--address", "everywhere")
    output, _ = exporter.communicate(timeout=60)
    assert exporter.returncode == 2
    assert "--address: 'everywhere' is not an IP address" in output.decode()
