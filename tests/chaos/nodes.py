"""Servers and networks of a chaos run's own: a RabbitMQ node, a Redis in a namespace, namespaces.

Nothing here touches the shared servers: an own RabbitMQ node has its own name, ports, epmd and
data directory; the namespaces and veth pairs are the run's own. See docs/chaos.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

from kombu.connection import Connection

from tasklane_dev.sinks import free_port
from tests.support import eventually
from tests.support.harness import RedisServer

#: The server script itself, not /usr/sbin's wrapper (which switches to the rabbitmq user and its
#: home, hence to the shared node's Erlang cookie).
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


def rabbitmq_server_available() -> bool:
    """Whether an own RabbitMQ node can be started here (the server script and epmd installed)."""
    return os.access(RABBITMQ_SERVER, os.X_OK) and shutil.which("epmd") is not None


class RabbitNode:
    """An own RabbitMQ node: own node name, AMQP, distribution and epmd ports, data directory.

    Started (again) by :meth:`start`, which waits until its AMQP port answers; :meth:`kill` ends it
    with SIGKILL to the node's process group (``beam.smp`` and its helpers), so a restart is a
    crash and what survives it is what the node had on disk: durable queues and the persistent
    messages it confirmed. Its epmd is a child of this object on a port of its own, so the shared
    node's epmd (4369) never sees it. :meth:`remove` ends both and deletes the node's files.

    Args:
        log: where the node's stdout and stderr go (appended across starts).
        prefix: the command prefix (``ip netns exec <ns>``) to start it in a network namespace.
        host: the address the lab reaches the AMQP port at; the node listens on all addresses
            of its namespace when ``prefix`` is given, else on 127.0.0.1 only.
    """

    def __init__(self, log: Path, prefix: list[str] | None = None, host: str = "127.0.0.1") -> None:
        tag = uuid.uuid4().hex[:8]
        self.name = f"chaos-{tag}@localhost"
        self.prefix = prefix or []
        self.host = host
        self.port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
        self.base = Path(tempfile.mkdtemp(prefix=f"chaos-rabbit-{tag}-"))
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        listen = "0.0.0.0" if self.prefix else "127.0.0.1"
        (self.base / "home").mkdir()
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {listen}:{self.port}\n"
            # guest may connect from a veth address, not only from loopback
            "loopback_users = none\n"
        )
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's (its NODENAME)
        self.starts = 0

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}//"

    def url_at(self, host: str) -> str:
        return f"amqp://guest:guest@{host}:{self.port}//"

    def env(self) -> dict[str, str]:
        base = self.base
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(base / "home"),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_LOGS": "-",  # to stdout, hence to ``log``
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(base / "node.pid"),
        }

    def start(self, timeout: float = 120.0) -> RabbitNode:
        """Start the node (on the same ports and data directory as before) and wait for AMQP."""
        if self.epmd is None or self.epmd.poll() is not None:
            self.epmd = subprocess.Popen(
                [*self.prefix, "epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*self.prefix, RABBITMQ_SERVER],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        process = self.process

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(
                    f"RabbitMQ node {self.name} exited with {process.returncode}: "
                    f"{self.log.read_text(errors='replace')[-2000:]}"
                )
            with Connection(self.url, connect_timeout=1) as conn:
                conn.connect()
            return True

        try:
            eventually(
                answers,
                timeout=timeout,
                interval=0.5,
                message=f"RabbitMQ node {self.name} to answer on {self.host}:{self.port}",
                ignoring=(OSError, ConnectionError),
            )
        except BaseException:
            self.remove()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL to the node's process group: beam.smp, erl_child_setup, inet_gethost."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)

    def remove(self) -> None:
        """End the node and its epmd, delete its data directory (the log stays)."""
        self.kill()
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.kill()
            self.epmd.wait(10)
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> RabbitNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()


class NamespacedRedis(RedisServer):
    """A throwaway ``redis-server`` started in a network namespace, listening on all its addresses.

    ``host`` is where the lab reaches it (the broker namespace's end of the host pair).
    """

    def __init__(self, directory: Path, prefix: list[str], host: str, *, appendonly: bool) -> None:
        super().__init__(directory, appendonly=appendonly)
        self.prefix = prefix
        self.host = host

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def url_at(self, host: str) -> str:
        return f"redis://{host}:{self.port}/0"

    #: Starting inside a namespace on a busy machine takes longer.
    start_timeout = 30.0

    def command(self) -> list[str]:
        return [*self.prefix, "redis-server", "--port", str(self.port), "--bind", "0.0.0.0",
                "--protected-mode", "no", "--save", "", "--appendonly",
                "yes" if self.appendonly else "no", "--dir", str(self.directory)]  # fmt: skip


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Namespaces:
    """Two network namespaces of the run's own, the worker's and the broker's, and three veth pairs.

    - the *link*: worker namespace ↔ broker namespace, addresses only inside them (``.1`` the
      worker's end, ``.2`` the broker's): the worker's broker connection, the one :meth:`cut`
      takes down;
    - host ↔ broker namespace (``.5`` host, ``.6`` broker): the Publisher's connection and the
      lab's own reads of the broker (queues, DLQ);
    - host ↔ worker namespace (``.9`` host, ``.10`` worker): the worker's result backend,
      idempotency store and SMTP, through forwarders on the host.

    Needs root.
    """

    #: A link-layer address no interface has: frames sent to it are dropped by the receiving
    #: veth end without a word (no ICMP, no reset, no ARP failure).
    NOWHERE = "02:00:5e:00:de:ad"

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.worker_ns = f"chaosw{tag}"
        self.broker_ns = f"chaosb{tag}"
        self.subnet = f"10.{200 + int(tag[:2], 16) % 50}.{int(tag[2:4], 16)}"
        self.worker_end = f"cl{tag}w"  # the link's end in the worker namespace
        self.broker_end = f"cl{tag}b"  # the link's end in the broker namespace
        self.worker_addr = f"{self.subnet}.1"
        self.broker_addr = f"{self.subnet}.2"  # where the worker reaches its broker
        self.host_to_broker = f"ch{tag}b"
        self.broker_public = f"{self.subnet}.6"  # where the Publisher and the lab reach it
        self.host_to_worker = f"ch{tag}w"
        self.host_for_worker = f"{self.subnet}.9"  # where the worker reaches state and SMTP

    def create(self) -> Namespaces:
        _ip("netns", "add", self.worker_ns)
        try:
            _ip("netns", "add", self.broker_ns)
            for ns in (self.worker_ns, self.broker_ns):
                _ip("-n", ns, "link", "set", "lo", "up")
            _ip("link", "add", self.worker_end, "type", "veth", "peer", "name", self.broker_end)
            for end, ns, addr in (
                (self.worker_end, self.worker_ns, self.worker_addr),
                (self.broker_end, self.broker_ns, self.broker_addr),
            ):
                _ip("link", "set", end, "netns", ns)
                _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", end)
                _ip("-n", ns, "link", "set", end, "up")
            for host_end, ns, host_addr, inside in (
                (self.host_to_broker, self.broker_ns, f"{self.subnet}.5", self.broker_public),
                (self.host_to_worker, self.worker_ns, self.host_for_worker, f"{self.subnet}.10"),
            ):
                peer = host_end[:-1] + "n" + host_end[-1]
                _ip("link", "add", host_end, "type", "veth", "peer", "name", peer)
                _ip("link", "set", peer, "netns", ns)
                _ip("addr", "add", f"{host_addr}/30", "dev", host_end)
                _ip("link", "set", host_end, "up")
                _ip("-n", ns, "addr", "add", f"{inside}/30", "dev", peer)
                _ip("-n", ns, "link", "set", peer, "up")
        except BaseException:
            self.delete()
            raise
        return self

    def in_worker(self, command: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.worker_ns, *command]

    def in_broker(self, command: list[str]) -> list[str]:
        return self.in_broker_prefix() + command

    def in_broker_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.broker_ns]

    # ---- the link cut: ``ip link set down`` on both ends

    def link_down(self) -> None:
        """``ip link set down`` on both ends of the worker–broker link."""
        _ip("-n", self.worker_ns, "link", "set", self.worker_end, "down")
        _ip("-n", self.broker_ns, "link", "set", self.broker_end, "down")

    def link_up(self) -> None:
        """Both ends up again; the kernel puts the addresses' routes back."""
        _ip("-n", self.broker_ns, "link", "set", self.broker_end, "up")
        _ip("-n", self.worker_ns, "link", "set", self.worker_end, "up")

    # ---- the silent partition: frames to a link-layer address nobody has, links up

    def _neighbours(self) -> list[tuple[str, ...]]:
        return [
            ("-n", self.worker_ns, "neigh", "{}", self.broker_addr, "dev", self.worker_end),
            ("-n", self.broker_ns, "neigh", "{}", self.worker_addr, "dev", self.broker_end),
        ]

    def silence(self) -> None:
        """Drop the link's frames both ways, silently: no reset, no ICMP, links up."""
        for entry in self._neighbours():
            verb = entry.index("{}")
            _ip(*entry[:verb], "replace", *entry[verb + 1 :], "lladdr", self.NOWHERE,
                "nud", "permanent")  # fmt: skip

    def unsilence(self) -> None:
        for entry in self._neighbours():
            verb = entry.index("{}")
            _ip(*entry[:verb], "del", *entry[verb + 1 :])

    def delete(self) -> None:
        """Delete both namespaces (and so the veth pairs; the host ends too, to be sure)."""
        for args in (
            ("netns", "del", self.worker_ns),
            ("netns", "del", self.broker_ns),
            ("link", "del", self.host_to_broker),
            ("link", "del", self.host_to_worker),
        ):
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _ip(*args)


def netns_available() -> bool:
    """Whether this process may create network namespaces (root, ``ip`` installed)."""
    name = f"chaosp{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", name)
    except (subprocess.SubprocessError, OSError):
        return False
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        _ip("netns", "del", name)
    return True
