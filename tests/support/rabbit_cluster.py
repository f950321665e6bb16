"""A throwaway three-node RabbitMQ cluster on this machine, which a test may kill and start again.

Tests of what a clustered broker does when a node dies (quorum queue failover) use one of these;
the shared broker on 5672 is never touched: the nodes have their own names, ports, data, config
and Erlang cookie, and register with an ``epmd`` of their own on a free port.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from tasklane_dev.sinks import free_port
from tests.support import eventually

#: The Debian package's real scripts; /usr/sbin's wrappers would ``su`` to the rabbitmq user and
#: read /etc/rabbitmq/rabbitmq-env.conf (the shared broker's node name).
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")

#: Names every process a cluster starts in its environment (``TASKLANE_RABBIT_CLUSTER=<id>``):
#: Erlang port programs (``erl_child_setup``, ``inet_gethost``) leave the node's process group,
#: so only this finds them all.
MARKER = "TASKLANE_RABBIT_CLUSTER"


@dataclass
class _Node:
    """One node's name, ports, files and OS process."""

    index: int
    name: str
    directory: Path
    amqp_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    output: IO[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.directory / "log" / f"{self.name}.log"

    @property
    def stdout(self) -> Path:
        return self.directory / "stdout.log"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in (self.stdout, self.log):
            text = path.read_text(errors="replace") if path.exists() else "(none)"
            parts.append(f"--- {path} ---\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)


class RabbitCluster:
    """Three ``rabbitmq-server`` nodes clustered on this machine, with the management plugin.

    Node ``i`` (0-based) answers AMQP at ``url(i)`` and HTTP at ``management_url(i)``; a test
    stops (``stop_node``: the app only) or kills (``kill_node``: SIGKILL) one and starts it
    again with its data (``start_node``). ``close`` leaves no process behind.

    Args:
        directory: where each node's data, logs and config go (``node1``, ``node2``, ...), with
            the cluster's Erlang cookie (``home/.erlang.cookie``); kept after ``close``.
        size: how many nodes.
    """

    #: Seconds a node may take to boot (or to join the cluster) on a busy 2-core machine.
    start_timeout = 120.0

    def __init__(self, directory: Path, *, size: int = 3) -> None:
        self.directory = directory
        self.id = f"tl-{secrets.token_hex(4)}"
        self.epmd_port = free_port()
        self._nodes = [
            _Node(i, f"{self.id}-{i + 1}@localhost", directory / f"node{i + 1}")
            for i in range(size)
        ]
        self._epmd: subprocess.Popen[bytes] | None = None
        #: Nodes whose app ``stop_node`` stopped: their VMs answer, but not for the cluster.
        self._stopped: set[int] = set()

    # --- addresses --------------------------------------------------------------------------

    @property
    def node_names(self) -> list[str]:
        """Erlang node names, ``tl-<random>-1@localhost`` and so on, in index order."""
        return [node.name for node in self._nodes]

    @property
    def urls(self) -> list[str]:
        """Each node's AMQP URL (user guest, which RabbitMQ lets in from loopback only)."""
        return [self.url(i) for i in range(len(self._nodes))]

    def url(self, i: int) -> str:
        """Node ``i``'s AMQP URL."""
        return f"amqp://guest:guest@127.0.0.1:{self._nodes[i].amqp_port}//"

    def management_url(self, i: int) -> str:
        """Node ``i``'s management HTTP API root, without a trailing slash."""
        return f"http://127.0.0.1:{self._nodes[i].management_port}"

    # --- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> Self:
        """Start epmd and every node, and join them all to node 0; closes all when it fails."""
        try:
            self._write_files()
            self._epmd = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                env=self._env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            eventually(
                lambda: _accepts(self.epmd_port),
                timeout=30,
                message=f"epmd on port {self.epmd_port}",
            )
            for node in self._nodes:
                self._launch(node)
            # Booting is most of the time (10-30 s each here); the nodes boot side by side.
            with ThreadPoolExecutor(len(self._nodes)) as pool:
                list(pool.map(self._await_boot, self._nodes))
            # One by one: each join rewrites the cluster's membership (its Mnesia schema).
            for node in self._nodes[1:]:
                self._ctl(node, "stop_app")
                self._ctl(node, "join_cluster", self._nodes[0].name)
                self._ctl(node, "start_app", timeout=self.start_timeout)
            everyone = list(range(len(self._nodes)))
            eventually(
                lambda: self.running_nodes() == everyone,
                timeout=self.start_timeout,
                interval=1.0,
                message=lambda: f"{everyone} running, not {self.running_nodes()}",
            )
        except BaseException:
            self.close()
            raise
        return self

    def stop_node(self, i: int) -> None:
        """Stop RabbitMQ on node ``i`` gracefully (``rabbitmqctl stop_app``); its VM stays up."""
        self._ctl(self._nodes[i], "stop_app", timeout=self.start_timeout)
        self._stopped.add(i)

    def kill_node(self, i: int) -> None:
        """SIGKILL node ``i``'s OS processes at once, as a crashed machine would leave it."""
        node = self._nodes[i]
        if node.process is not None and node.process.poll() is None:
            os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait(30)
        # Its port programs left the group; with the VM gone they exit, unless held up.
        self._kill_strays({node.name})

    def start_node(self, i: int) -> None:
        """Start node ``i`` again, with its data, and wait until the cluster lists it running.

        A node whose app was stopped gets ``start_app``; a killed one boots a new VM.
        """
        node = self._nodes[i]
        if node.alive():
            self._ctl(node, "start_app", timeout=self.start_timeout)
        else:
            self._launch(node)
            self._await_boot(node)
        self._stopped.discard(i)
        eventually(
            lambda: i in self.running_nodes(),
            timeout=self.start_timeout,
            interval=1.0,
            message=lambda: (
                f"node {i} running again, not {self.running_nodes()}:\n" + node.log_tail()
            ),
        )

    def close(self) -> None:
        """Kill every node and epmd, and wait until none of their processes is left."""
        for node in self._nodes:
            if node.process is not None and node.process.poll() is None:
                os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait(30)
            if node.output is not None:
                node.output.close()
                node.output = None
        if self._epmd is not None and self._epmd.poll() is None:
            os.killpg(self._epmd.pid, signal.SIGKILL)
            self._epmd.wait(30)
        self._kill_strays()
        eventually(
            lambda: not self.processes(),
            timeout=30,
            interval=0.2,
            message=lambda: f"the cluster's processes to exit: {self.processes()}",
        )

    # --- state ------------------------------------------------------------------------------

    def running_nodes(self) -> list[int]:
        """The indices of the nodes the cluster lists as running (``cluster_status``), sorted.

        Asked of each live node whose app runs, in turn, until one answers; empty when none
        does.
        """
        index = {node.name: node.index for node in self._nodes}
        for node in self._nodes:
            if not node.alive() or node.index in self._stopped:
                continue
            result = self._run_ctl(node, "cluster_status", "--formatter", "json", timeout=60)
            if result.returncode != 0:
                continue
            try:
                running = json.loads(result.stdout)["running_nodes"]
            except (ValueError, KeyError):
                continue
            return sorted(index[name] for name in running if name in index)
        return []

    def queue_leader(self, name: str, vhost: str = "/") -> int:
        """The index of the node that leads quorum queue ``name`` (management API ``leader``).

        Waits until a running node's API names a leader; fails the test otherwise.
        """
        index = {node.name: node.index for node in self._nodes}
        path = f"/api/queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(name)}"

        def leader() -> tuple[int] | None:
            for i in self.running_nodes():
                try:
                    queue = self._management_get(i, path)
                except (OSError, ValueError):
                    continue
                if queue.get("leader") in index:
                    return (index[queue["leader"]],)
            return None

        (i,) = eventually(
            leader,
            timeout=60,
            interval=1.0,
            message=f"a leader of queue {name!r} in the management API",
        )
        return i

    def processes(self) -> list[int]:
        """The pids of every live process this cluster started (nodes, their helpers, epmd)."""
        return _marked(f"{MARKER}={self.id}".encode())

    # --- helpers ----------------------------------------------------------------------------

    def _env(self, node: _Node | None = None) -> dict[str, str]:
        env = {
            **os.environ,
            MARKER: self.id,
            # The cookie file: every node and rabbitmqctl call of this cluster shares it.
            "HOME": str(self.directory / "home"),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # Instead of /etc/rabbitmq/rabbitmq-env.conf, the shared broker's.
            "RABBITMQ_CONF_ENV_FILE": str(self.directory / "rabbitmq-env.conf"),
            # rabbitmqctl takes any free port, not one of 35672-35682 the shared broker's use.
            "RABBITMQ_CTL_DIST_PORT_MIN": "0",
            "RABBITMQ_CTL_DIST_PORT_MAX": "0",
            # A VM (or rabbitmqctl's) that crashes writes its dump here, not into the checkout.
            "ERL_CRASH_DUMP": str(self.directory / "erl_crash.dump"),
        }
        if node is None:
            return env
        return {
            **env,
            "RABBITMQ_NODENAME": node.name,
            # 3.10 sets inet_dist_listen_min/max to this itself (default: AMQP port + 20000).
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_CONFIG_FILE": str(node.directory / "rabbitmq.conf"),
            "RABBITMQ_CONFIG_FILES": str(node.directory / "conf.d"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(node.directory / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(node.directory / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(node.directory / "data"),
            "RABBITMQ_LOG_BASE": str(node.directory / "log"),
            # The node name on the VM's command line, so ``ps`` shows whose VM it is.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                f"-kernel inet_dist_use_interface {{127,0,0,1}} -tasklane_node {node.name}"
            ),
        }

    def _write_files(self) -> None:
        home = self.directory / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)  # Erlang refuses a cookie others may read
        (self.directory / "rabbitmq-env.conf").write_text("")
        for node in self._nodes:
            for sub in ("data", "log", "conf.d"):
                (node.directory / sub).mkdir(parents=True, exist_ok=True)
            (node.directory / "enabled_plugins").write_text("[rabbitmq_management].\n")
            (node.directory / "rabbitmq.conf").write_text(
                f"listeners.tcp.default = 127.0.0.1:{node.amqp_port}\n"
                f"management.tcp.ip = 127.0.0.1\n"
                f"management.tcp.port = {node.management_port}\n"
                # Three nodes and the shared broker on one small disk: no free-disk alarm that
                # would block publishers.
                "disk_free_limit.absolute = 1MB\n"
            )

    def _launch(self, node: _Node) -> None:
        if node.output is None:
            node.output = node.stdout.open("ab")
        node.process = subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")],
            env=self._env(node),
            stdout=node.output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _await_boot(self, node: _Node) -> None:
        """Wait until ``node``'s AMQP listener is up and ``await_startup`` says it booted."""

        def listening() -> bool:
            if not node.alive():
                raise RuntimeError(f"{node.name} exited:\n{node.log_tail()}")
            return _accepts(node.amqp_port)

        eventually(
            listening,
            timeout=self.start_timeout,
            interval=0.5,
            message=lambda: f"{node.name} to listen on {node.amqp_port}:\n{node.log_tail()}",
        )
        self._ctl(node, "await_startup", "--timeout", str(int(self.start_timeout)))

    def _run_ctl(self, node: _Node, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        command = [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", node.name, *args]
        try:
            return subprocess.run(
                command,
                env=self._env(),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(command, -1, "", f"timed out: {exc}")

    def _ctl(self, node: _Node, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl -n <node> args``; its output, or a RuntimeError with the node's log."""
        # The CLI's own deadline, with room for its VM to start on a busy machine.
        result = self._run_ctl(node, *args, timeout=timeout + 30)
        if result.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl -n {node.name} {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n{node.log_tail()}"
            )
        return result.stdout

    def _management_get(self, i: int, path: str) -> dict[str, Any]:
        request = urllib.request.Request(
            self.management_url(i) + path,
            headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body: dict[str, Any] = json.load(response)
        return body

    def _kill_strays(self, names: set[str] | None = None) -> None:
        """SIGKILL what is left of this cluster (of nodes ``names`` only, when given)."""
        marker = f"{MARKER}={self.id}".encode()
        wanted = {f"RABBITMQ_NODENAME={name}".encode() for name in names} if names else None
        for pid in _marked(marker, wanted):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _marked(marker: bytes, any_of: set[bytes] | None = None) -> list[int]:
    """Pids whose environment holds ``marker`` (and one of ``any_of``, when given)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if marker in environ and (any_of is None or environ & any_of):
            pids.append(int(entry.name))
    return pids
