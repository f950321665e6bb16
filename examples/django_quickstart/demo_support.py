"""What ``demo.py`` runs beside the quick start: processes in the background, Beat and Flower.

Each process runs in a session of its own with its output in a log file; it is ready when its
log (or, for Flower, its HTTP port) says so, and stopped with SIGTERM, as a deployment stops it.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self

import httpx

from tasklane_dev.sinks import free_port

TASKLANE = str(Path(sys.executable).with_name("tasklane"))
FLOWER_USER = "ops"


class DemoFailed(Exception):
    """A step did not do what it should; the message says which."""


def wait_until(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """``check()``'s first truthy value, polled; :class:`DemoFailed` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def process_env(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment with ``env`` on top, without ``DJANGO_SETTINGS_MODULE``.

    Workers, Beat and Flower are no Django processes: with that variable set, Celery's Django
    fix-up would make them load the project.
    """
    inherited = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    return {**inherited, **env}


class Background:
    """``argv`` started at once in a session of its own, its output in ``log``.

    :meth:`wait_ready` waits until ``ready(its log)``; leaving the ``with`` block stops it.
    Several start together and then are waited for: each is a Python process taking seconds
    to import on a busy machine.
    """

    def __init__(
        self,
        what: str,
        argv: list[str],
        log: Path,
        ready: Callable[[str], bool],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.what, self.log, self._ready = what, log, ready
        self._terminated = False
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 90) -> Self:
        """Self, once ready; :class:`DemoFailed` if it exited or took longer than ``timeout``."""
        process = self.process
        wait_until(
            lambda: process.poll() is not None or self._ready(self.output()),
            f"{self.what} to start",
            timeout,
        )
        if process.poll() is not None:
            raise DemoFailed(f"{self.what} exited {process.returncode}:\n{self.output()}")
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self) -> None:
        """Send SIGTERM once, as Kubernetes does, unless it exited already.

        Once: a second SIGTERM may cut the graceful stop the first one began short.
        """
        if not self._terminated and self.process.poll() is None:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then its exit status; its process group is killed if it does not exit."""
        self.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            raise DemoFailed(f"{self.what} ignored SIGTERM for {timeout:g} s") from None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def beat(env: Mapping[str, str], log: Path) -> Background:
    """``tasklane beat`` on the state Redis of ``env``; ready once it is the active Beat."""
    return Background(
        "tasklane beat", [TASKLANE, "beat"], log, lambda text: "holds the lock" in text,
        env=process_env(env),
    )  # fmt: skip


class Flower:
    """``tasklane flower`` on a free loopback port, behind basic auth; its HTTP API."""

    def __init__(self, env: Mapping[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # A password of this run's own: Flower is never served without one.
        self.auth = (FLOWER_USER, secrets.token_urlsafe(12))
        env = process_env(
            {
                **env,
                "TASKLANE_FLOWER_BASIC_AUTH": ":".join(self.auth),
                "TASKLANE_FLOWER_PORT": str(self.port),
                "TASKLANE_FLOWER_ADDRESS": "127.0.0.1",
            }
        )
        #: The process: ready once ``/healthcheck`` answers.
        self.process = Background(
            "tasklane flower", [TASKLANE, "flower"], log, lambda _: self._healthy(), env=env
        )

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthcheck", timeout=2).text == "OK"
        except httpx.TransportError:
            return False

    def get(self, path: str) -> Any:
        """``GET path`` with the credentials; its JSON, or None unless it answered 200."""
        try:
            response = httpx.get(f"{self.url}{path}", auth=self.auth, timeout=10)
        except httpx.TransportError:
            return None
        return response.json() if response.status_code == 200 else None

    def workers(self) -> dict[str, Any]:
        """``/api/workers``, asked afresh: Flower asks the workers by remote control now."""
        return self.get("/api/workers?refresh=1") or {}

    def tasks(self) -> dict[str, Any]:
        """``/api/tasks``: the tasks Flower knows from the workers' task events, by id."""
        return self.get("/api/tasks") or {}
