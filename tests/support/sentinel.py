"""A throwaway Redis master, its replica and three Sentinels, for failover tests.

Production reaches Redis through Sentinel; tests that kill the master and watch a client follow
the failover use a ``SentinelGroup``. The shared Redis is never touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import redis

from tests.support import eventually

Address = tuple[str, int]

HOST = "127.0.0.1"


def _conf_string(value: str) -> str:
    """``value`` quoted for a redis.conf line, so a password may hold spaces or quotes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no {path.name})"
    return "\n".join(text.splitlines()[-lines:])


def _free_ports(count: int) -> list[int]:
    """``count`` different TCP ports on 127.0.0.1 that nothing listens on right now.

    Held until all are chosen: one at a time, the kernel may hand out a port it has just
    handed out, and two processes of the group would then fight over it.
    """
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def _group_alive(pgid: int) -> bool:
    """Some process (a zombie too) is still in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class _Node:
    """One process of the group: its port, its directory and, while it runs, its process."""

    port: int
    directory: Path
    conf: Path
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    started: list[int] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self) -> None:
        # A session of its own, so a kill reaches a replication fork child too.
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.started.append(self.process.pid)

    def kill(self) -> None:
        """SIGKILL the process and its group, and wait until they are gone."""
        self.send_kill()
        self.reap()

    def send_kill(self) -> None:
        """SIGKILL the process and its group; a no-op once they have gone."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def reap(self) -> None:
        """Wait for the killed process, and for its group to be empty."""
        process = self.process
        if process is None:
            return
        process.wait(10)
        # A replication fork child dies a moment later and is reaped by init, not by us.
        eventually(
            lambda: not _group_alive(process.pid),
            timeout=30,
            message=f"process group {process.pid} to be gone",
        )


class SentinelGroup:
    """A Redis master, one replica and three Sentinels watching them, on free ports.

    Sentinels run with quorum 2, ``down-after-milliseconds`` 3000 (``down_after_ms``) and
    ``failover-timeout 5000``, so a killed master is replaced within seconds. Use it as a
    context manager: ``close`` kills every process it started, whatever the test did.

    Args:
        directory: a temporary directory; each process gets a subdirectory (config, log, and
            the append-only file when asked for).
        master_name: the name the Sentinels monitor the master under.
        password: ``requirepass`` and ``masterauth`` of master and replica, given to Sentinels
            as ``sentinel auth-pass``; ``None`` for none.
        sentinel_password: the Sentinels' own ``requirepass``; ``None`` for none.
        appendonly: keep an append-only file (fsync every second), so a restarted server holds
            what it held; by default servers keep nothing.
        down_after_ms: how long a server must not answer before a Sentinel calls it down. A
            replica whose link to the master has been down for over ten times this is never
            promoted. At 1000 ms, a freshly promoted master on busy CI cores missed the
            Sentinels' first pings, was voted down in turn, and the old master (restarted
            empty) was promoted back: a second failover no test asked for.
    """

    #: The number of Sentinels that must agree that the master is down.
    quorum = 2
    #: Seconds ``start`` waits for servers to sync and Sentinels to discover each other.
    start_timeout = 90.0
    #: Seconds ``wait_for_failover`` waits for a quorum to name a new master.
    failover_wait = 90.0
    #: Seconds ``restart`` waits for the server to answer, and ``wait_for_replica`` for its role.
    node_timeout = 90.0

    def __init__(
        self,
        directory: Path,
        *,
        master_name: str = "tasklane",
        password: str | None = None,
        sentinel_password: str | None = None,
        appendonly: bool = False,
        down_after_ms: int = 3000,
    ) -> None:
        self.directory = directory
        self.master_name = master_name
        self.password = password
        self.sentinel_password = sentinel_password
        self.appendonly = appendonly
        self.down_after_ms = down_after_ms
        master_port, replica_port, *sentinel_ports = _free_ports(5)
        self._servers = {
            master_port: self._server(master_port, "master", replica_of=None),
            replica_port: self._server(replica_port, "replica", replica_of=master_port),
        }
        self._sentinels = [
            self._sentinel(port, index, master_port) for index, port in enumerate(sentinel_ports)
        ]

    # -- configuration -------------------------------------------------------------------------

    def _server(self, port: int, role: str, *, replica_of: int | None) -> _Node:
        directory = self.directory / f"{role}-{port}"
        directory.mkdir(parents=True)
        lines = [
            f"port {port}",
            f"bind {HOST}",
            'save ""',
            f"appendonly {'yes' if self.appendonly else 'no'}",
            "appendfsync everysec",
            f"dir {_conf_string(str(directory))}",
            f"logfile {_conf_string(str(directory / 'redis.log'))}",
        ]
        if replica_of is not None:
            lines.append(f"replicaof {HOST} {replica_of}")
        if self.password is not None:
            # masterauth on the master too: after a failover it comes back as a replica.
            lines += [
                f"requirepass {_conf_string(self.password)}",
                f"masterauth {_conf_string(self.password)}",
            ]
        conf = directory / "redis.conf"
        conf.write_text("\n".join(lines) + "\n")
        return _Node(port, directory, conf, ["redis-server", str(conf)])

    def _sentinel(self, port: int, index: int, master_port: int) -> _Node:
        directory = self.directory / f"sentinel{index}-{port}"
        directory.mkdir(parents=True)
        name = self.master_name
        lines = [
            f"port {port}",
            f"bind {HOST}",
            f"dir {_conf_string(str(directory))}",
            f"logfile {_conf_string(str(directory / 'redis.log'))}",
            f"sentinel monitor {name} {HOST} {master_port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} 5000",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.password is not None:
            lines.append(f"sentinel auth-pass {name} {_conf_string(self.password)}")
        if self.sentinel_password is not None:
            # Without ``sentinel sentinel-pass`` a Sentinel also uses its requirepass to talk to
            # the other Sentinels, so all three share it.
            lines.append(f"requirepass {_conf_string(self.sentinel_password)}")
        # Each Sentinel rewrites its own file (its id, the replicas and Sentinels it found).
        conf = directory / "sentinel.conf"
        conf.write_text("\n".join(lines) + "\n")
        return _Node(port, directory, conf, ["redis-server", str(conf), "--sentinel"])

    # -- addresses -----------------------------------------------------------------------------

    @property
    def sentinel_addresses(self) -> list[Address]:
        """The Sentinels' ``(host, port)``, as ``redis.sentinel.Sentinel`` takes them."""
        return [(HOST, node.port) for node in self._sentinels]

    @property
    def server_addresses(self) -> list[Address]:
        """The ``(host, port)`` of both Redis servers, whichever is master now."""
        return [(HOST, port) for port in self._servers]

    def broker_url(self, db: int = 0) -> str:
        """A Kombu/Celery Sentinel URL: ``sentinel://127.0.0.1:p1/0;sentinel://...``.

        With a ``password`` every part carries it (Kombu and Celery read the first part's);
        the Sentinels' own password is not in the URL but in ``transport_options``.
        """
        auth = "" if self.password is None else f":{quote(self.password, safe='')}@"
        return ";".join(
            f"sentinel://{auth}{host}:{port}/{db}" for host, port in self.sentinel_addresses
        )

    def transport_options(self) -> dict[str, Any]:
        """What ``broker_transport_options`` and ``result_backend_transport_options`` need."""
        options: dict[str, Any] = {"master_name": self.master_name}
        if self.sentinel_password is not None:
            options["sentinel_kwargs"] = {"password": self.sentinel_password}
        return options

    def pids(self) -> list[int]:
        """Every process id the group ever started (restarts included), for leak checks."""
        return [pid for node in self._nodes() for pid in node.started]

    def _nodes(self) -> list[_Node]:
        return [*self._servers.values(), *self._sentinels]

    # -- clients -------------------------------------------------------------------------------

    def server_client(self, address: Address) -> redis.Redis:
        """A plain client of one Redis server (no Sentinel), with the group's password."""
        host, port = address
        return redis.Redis(
            host, port, password=self.password, socket_timeout=5, socket_connect_timeout=2
        )

    def _sentinel_client(self, address: Address) -> redis.Redis:
        host, port = address
        return redis.Redis(
            host,
            port,
            password=self.sentinel_password,
            socket_timeout=5,
            socket_connect_timeout=2,
            decode_responses=True,
        )

    def _reports(self) -> dict[Address, Address | str]:
        """Each Sentinel's master address, or why it gave none."""
        reports: dict[Address, Address | str] = {}
        for sentinel in self.sentinel_addresses:
            try:
                with self._sentinel_client(sentinel) as client:
                    reply = client.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
                    )
            except redis.RedisError as exc:
                reports[sentinel] = f"{type(exc).__name__}: {exc}"
                continue
            reports[sentinel] = (reply[0], int(reply[1])) if reply else "no master"
        return reports

    def _role(self, address: Address) -> list[Any] | None:
        """``ROLE`` of a server, ``None`` when it does not answer."""
        try:
            with self.server_client(address) as client:
                role = client.execute_command("ROLE")
        except redis.RedisError:
            return None
        return [item.decode() if isinstance(item, bytes) else item for item in role]

    def _describe(self) -> str:
        """What the Sentinels and servers say now, with their logs' tails: for failures."""
        parts = [f"sentinels report {self._reports()}"]
        for port, node in self._servers.items():
            state = "running" if node.running() else "not running"
            parts.append(f"server {port} ({state}) ROLE {self._role((HOST, port))}")
        for node in self._nodes():
            parts.append(f"--- {node.log}:\n{_tail(node.log)}")
        return "\n".join(parts)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        """Start master, replica and Sentinels; return once every Sentinel knows them all."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        master, replica = self.server_addresses
        for port in self._servers:
            self._spawn_server(port)

        # Sentinels started after the replica is in sync see it in the master's first INFO,
        # instead of ten seconds later at the next one.
        eventually(
            lambda: self._replica_connected(replica, master),
            timeout=self.start_timeout,
            message=lambda: f"the replica to sync with the master\n{self._describe()}",
        )
        for node in self._sentinels:
            node.spawn()

        for node in self._sentinels:
            eventually(
                lambda node=node: self._knows_all(node),  # type: ignore[misc]
                timeout=self.start_timeout,
                interval=0.2,
                message=lambda node=node: (  # type: ignore[misc]
                    f"sentinel {node.port} to know the master, the replica and 2 other "
                    f"sentinels\n{self._describe()}"
                ),
                ignoring=(redis.ConnectionError, redis.TimeoutError),
            )

    def _knows_all(self, node: _Node) -> bool:
        """The Sentinel ``node`` counts the replica and the two other Sentinels."""
        process = node.process
        if process is None or process.poll() is not None:
            code = None if process is None else process.returncode
            raise RuntimeError(f"sentinel {node.port} exited with {code}\n{self._describe()}")
        with self._sentinel_client((HOST, node.port)) as client:
            # redis-py parses the reply into a dict keyed by the field names.
            info = client.execute_command("SENTINEL", "MASTER", self.master_name)
        return int(info["num-slaves"]) >= 1 and int(info["num-other-sentinels"]) >= 2

    def _replica_connected(self, replica: Address, master: Address) -> bool:
        """``replica`` reports ``master`` as its master, with the link up."""
        role = self._role(replica)
        return role is not None and role[:4] == ["slave", master[0], master[1], "connected"]

    def _spawn_server(self, port: int) -> None:
        node = self._servers[port]
        node.spawn()
        process = node.process
        assert process is not None

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(
                    f"redis-server {port} exited with {process.returncode}:\n{_tail(node.log)}"
                )
            with self.server_client((HOST, port)) as client:
                return bool(client.ping())

        eventually(
            answers,
            timeout=self.node_timeout,
            message=f"redis-server {port} to answer",
            ignoring=(redis.ConnectionError, redis.TimeoutError),
        )

    def close(self) -> None:
        """SIGKILL every process of the group and wait until all are gone; safe to call twice."""
        # Every process gets its signal before any wait can fail.
        for node in self._nodes():
            node.send_kill()
        for node in self._nodes():
            node.reap()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- failover ------------------------------------------------------------------------------

    def master(self) -> Address:
        """The master's ``(host, port)`` as most answering Sentinels report it now."""
        addresses = [report for report in self._reports().values() if isinstance(report, tuple)]
        if not addresses:
            raise RuntimeError(f"no sentinel names a master\n{self._describe()}")
        return Counter(addresses).most_common(1)[0][0]

    def kill_master(self) -> Address:
        """SIGKILL the server the Sentinels call master; its address."""
        address = self.master()
        node = self._servers.get(address[1])
        if node is None or not node.running():
            raise RuntimeError(f"master {address} is not a running server of this group")
        node.kill()
        return address

    def wait_for_failover(self, old: Address) -> Address:
        """Wait until a quorum of Sentinels names a master other than ``old`` that answers
        ``ROLE`` as master; its address."""

        def promoted() -> Address | None:
            votes = Counter(
                report
                for report in self._reports().values()
                if isinstance(report, tuple) and report != old
            )
            for address, count in votes.items():
                role = self._role(address)
                if count >= self.quorum and role is not None and role[0] == "master":
                    return address
            return None

        return eventually(
            promoted,
            timeout=self.failover_wait,
            interval=0.2,
            message=lambda: (
                f"a quorum of sentinels to name a master other than {old}\n" + self._describe()
            ),
        )

    def restart(self, port: int) -> None:
        """Start a killed server again, same port, config and directory; the Sentinels then
        turn it into a replica of the current master (see ``wait_for_replica``)."""
        node = self._servers[port]
        if node.running():
            raise RuntimeError(f"redis-server {port} is still running")
        self._spawn_server(port)

    def wait_for_replica(self, address: Address, master: Address) -> None:
        """Wait until the server at ``address`` is a connected replica of ``master``."""
        eventually(
            lambda: self._replica_connected(address, master),
            timeout=self.node_timeout,
            interval=0.2,
            message=lambda: f"{address} to be a connected replica of {master}\n" + self._describe(),
        )

    def cut_off(self, replica: Address) -> None:
        """Break ``replica``'s link to its master and keep it broken (a wrong ``masterauth``):
        whatever the master writes from now on exists there only, the replication window held
        open. A stopped process would not do: the kernel still takes in what the master sends.
        """
        with self.server_client(replica) as client:
            client.config_set("masterauth", "cut-off-" + uuid.uuid4().hex)
            client.execute_command("CLIENT", "KILL", "TYPE", "master")
        eventually(
            lambda: (role := self._role(replica)) is not None and role[3] != "connected",
            timeout=self.node_timeout,
            interval=0.1,
            message=lambda: f"{replica} to lose its master link\n" + self._describe(),
        )

    def reconnect(self, replica: Address) -> None:
        """Give a server :meth:`cut_off` cut off its ``masterauth`` back."""
        with self.server_client(replica) as client:
            client.config_set("masterauth", self.password or "")
