"""The Django quick start (examples/django_quickstart) run as its own processes: a PostgreSQL
database of its own, ``manage.py`` commands, ``runserver`` and ``tasklane_relay``.

The quick start is configured by its environment (its settings read ``PGDATABASE`` and the
``TASKLANE_*`` variables), never in this process, whose Django the conftest configured.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasklane_dev.sinks import free_port
from tests.support import eventually
from tests.support.harness import stop_process_group

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "django_quickstart"
#: The database the per-test databases are created from.
ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
ACCESS_TOKEN = "test-access-token"
ROBOT_SECRET_REF = "dingtalk-orders"  # the quick start's settings.DINGTALK_SECRET_REF
ROBOT_SECRET = "SECtest-robot-signing-secret"


@contextmanager
def example_database() -> Iterator[str]:
    """A PostgreSQL database ``tasklane_example_<random>`` for one test; dropped after it."""
    import psycopg

    name = f"tasklane_example_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def example_env(
    *, database: str, broker_url: str, namespace: str, robot_url: str
) -> dict[str, str]:
    """The quick start's environment: PostgreSQL ``database``, the broker, the robot's URL."""
    return {
        "DJANGO_SETTINGS_MODULE": "quickstart.settings",
        "DJANGO_DEBUG": "0",
        "PGHOST": "127.0.0.1",
        "PGPORT": "5432",
        "PGUSER": "postgres",
        "PGDATABASE": database,
        "TASKLANE_BROKER_URL": broker_url,
        "TASKLANE_NAMESPACE": namespace,
        "DINGTALK_ROBOT_URL": f"{robot_url}?access_token={ACCESS_TOKEN}",
    }


def manage(*arguments: str, env: dict[str, str], timeout: float = 120) -> str:
    """Run ``python manage.py ARGUMENTS`` of the quick start; its output, or fail with it."""
    done = subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=EXAMPLE,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, (
        f"manage.py {' '.join(arguments)} exited {done.returncode}:\n{output}"
    )
    return output


class ExampleProcess:
    """A long-running ``python manage.py ...`` of the quick start, in a session of its own."""

    def __init__(self, arguments: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log_file = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", *arguments],
            cwd=EXAMPLE,
            env={**os.environ, **env},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 60) -> None:
        def printed() -> bool:
            if text in self.output():
                return True
            if self.process.poll() is not None:
                raise AssertionError(f"exited {self.process.returncode}:\n{self.output()}")
            return False

        eventually(printed, timeout=timeout, message=lambda: f"{text!r} in:\n{self.output()}")

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, as Kubernetes stops a pod; the exit status."""
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout)
        self._log_file.close()
        return status

    def stop(self) -> None:
        stop_process_group(self.process)
        self._log_file.close()


@contextmanager
def runserver(env: dict[str, str], log: Path) -> Iterator[str]:
    """``manage.py runserver`` (threaded, no reloader) on a free port; yields its base URL."""
    import httpx

    port = free_port()
    server = ExampleProcess(["runserver", "--noreload", f"127.0.0.1:{port}"], env, log)
    url = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            if server.process.poll() is not None:
                raise AssertionError(f"runserver exited:\n{server.output()}")
            return httpx.get(f"{url}/orders/", timeout=5).status_code == 405  # POST only

        eventually(
            answers,
            timeout=60,
            interval=0.2,
            ignoring=(httpx.TransportError,),
            message=lambda: f"runserver to answer:\n{server.output()}",
        )
        yield url
    finally:
        server.stop()


def dingtalk_sign(secret: str, timestamp_ms: str) -> str:
    """The signature a DingTalk robot expects, computed as DingTalk's server does."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode()
