"""What the relay tests share: outbox rows written for real, a recording publisher, and relays run
in a thread or as a ``manage.py tasklane_relay`` process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasklane.publish import Publisher
from tasklane.wire.protocol import TaskMessage
from tests.support import eventually
from tests.support.harness import BrokerEnv, stop_process_group

REPO = Path(__file__).resolve().parents[3]
PROJECT = Path(__file__).resolve().parent / "relayproject"
EMAIL = "notifier.email.send"
SUCCEEDED = re.compile(r"Task notifier\.email\.send\[([0-9a-f-]{36})\] succeeded in")


def email(subject: str) -> dict[str, Any]:
    """An email payload with inline text, to the sink's catch-all."""
    return {"to": ["ada@example.com"], "subject": subject, "text": f"body of {subject}"}


def configure(tasklane_setting: Callable[..., None], broker: BrokerEnv, **keys: Any) -> None:
    """``TASKLANE`` for an outbox on ``broker``, in this test's namespace; ``keys`` win."""
    tasklane_setting(
        **{
            "BROKER_URL": broker.broker_url,
            "RESULT_BACKEND": broker.result_backend,
            "NAMESPACE": broker.namespace,
            "OUTBOX": True,
            **keys,
        }
    )


def write_emails(subjects: Sequence[str], using: str = "default") -> list[str]:
    """One email per subject through ``publish_on_commit``, each in a committed transaction."""
    from django.db import transaction

    from tasklane.contrib.django import publish_on_commit

    ids = []
    for subject in subjects:
        with transaction.atomic(using=using):
            ids.append(publish_on_commit(EMAIL, email(subject), using=using))
    return ids


def outbox_rows(using: str = "default") -> list[Any]:
    """Every outbox row of a database, in the relay's order (txid, id)."""
    from tasklane.contrib.django.models import OutboxMessage

    return list(OutboxMessage.objects.using(using).order_by("txid", "id"))


def states(ids: Sequence[str], using: str = "default") -> dict[str, str]:
    """The state of each row by task id."""
    from tasklane.contrib.django.models import OutboxMessage

    rows = OutboxMessage.objects.using(using).filter(task_id__in=ids)
    return dict(rows.values_list("task_id", "state"))


def all_sent(ids: Sequence[str], using: str = "default") -> bool:
    found = states(ids, using)
    return len(found) == len(ids) and set(found.values()) == {"sent"}


class SendLog:
    """Sends the broker took, in the order they returned, from any number of publishers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sends: list[tuple[str, list[str]]] = []

    def add(self, contract: str, ids: list[str]) -> None:
        with self._lock:
            self._sends.append((contract, ids))

    @property
    def sends(self) -> list[tuple[str, list[str]]]:
        """(contract, task ids) per send."""
        with self._lock:
            return list(self._sends)

    def task_ids(self, contract: str | None = None) -> list[str]:
        """Every task id sent (of ``contract``), in order."""
        return [i for name, ids in self.sends if contract in (None, name) for i in ids]


class RecordingPublisher(Publisher):
    """A publisher that logs the task ids of every send the broker took, in order.

    Args:
        log: a log shared with other publishers, written besides this one's own.
    """

    def __init__(self, *args: Any, log: SendLog | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log = SendLog()
        self._shared = log
        self._stall: tuple[threading.Event, threading.Event] | None = None

    def send(self, task: Any, messages: list[TaskMessage], *, batch_size: int = 1000) -> None:
        super().send(task, messages, batch_size=batch_size)
        for log in (self.log, self._shared):
            if log is not None:
                log.add(self.contract(task).name, [message.task_id for message in messages])
        stall, self._stall = self._stall, None
        if stall is not None:
            stalled, release = stall
            stalled.set()
            assert release.wait(60), "the stalled send was never released"

    def stall_next_send(self) -> tuple[threading.Event, threading.Event]:
        """Make the next send, once the broker took it, set the first event and wait for the
        second: the relay then holds a sent batch it has not marked."""
        self._stall = (threading.Event(), threading.Event())
        return self._stall

    @property
    def sends(self) -> list[tuple[str, list[str]]]:
        """This publisher's sends: (contract, task ids) each."""
        return self.log.sends

    @property
    def task_ids(self) -> list[str]:
        return self.log.task_ids()


@contextmanager
def running(relay: Any) -> Iterator[threading.Event]:
    """``relay.run`` in a thread until the block ends; an exception it raised is raised here."""
    from django.db import connections

    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            relay.run(stop)
        except BaseException as exc:
            failure.append(exc)
        finally:
            connections.close_all()  # this thread's own connections

    thread = threading.Thread(target=run, name="relay")
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive(), "the relay did not stop within 60 s of being asked"
    if failure:
        raise failure[0]


def relay_until(relay: Any, done: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Run ``relay`` passes until ``done()``: rows may be held back a while by a transaction of
    another test running on the same PostgreSQL server (a snapshot's xmin is server-wide)."""

    def check() -> bool:
        relay.run_once()
        return done()

    eventually(check, timeout=timeout, interval=0.1, message=what)


class RelayProcess:
    """``python manage.py tasklane_relay`` of the test project, a process of its own."""

    def __init__(
        self,
        database: str,
        broker: BrokerEnv,
        log: Path,
        *arguments: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.log = log
        self._log_file = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "tasklane_relay", *arguments],
            cwd=PROJECT,
            env={
                **os.environ,
                **broker.env(),
                "PYTHONPATH": str(REPO),
                "DJANGO_SETTINGS_MODULE": "tests.integration.django.relayproject.settings",
                "RELAYPROJECT_DATABASE": database,
                **(env or {}),
            },
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_started(self) -> None:
        def started() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the relay exited:\n{self.output()}")
            return "relaying outbox rows" in self.output()

        eventually(started, timeout=60, message=lambda: f"the relay to start:\n{self.output()}")

    def kill(self) -> None:
        """SIGKILL, no goodbye."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self._log_file.close()

    def terminate(self) -> None:
        """SIGTERM, as Kubernetes stops a pod."""
        self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        stop_process_group(self.process)
        self._log_file.close()


def worker_runs(log: str) -> list[str]:
    """Task ids of the email tasks a worker's log says it ran, once per run."""
    return SUCCEEDED.findall(log)
