"""A final failure's dead letter is written even when the soft time limit's signal lands in it.

A task that fails just before its soft time limit (the media transcode checks the limit on its
own clock, frame by frame) is still running ``on_failure`` when the pool's timer sends the limit's
signal, and billiard's handler raises ``SoftTimeLimitExceeded`` wherever the process is: once, in
the middle of the write to the DLQ, and that letter was lost (seen in CI). Here the real handler
is installed as a pool process installs it, the real signal is sent as the write starts, and the
letter goes to the real Redis.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from billiard.exceptions import SoftTimeLimitExceeded
from billiard.pool import soft_timeout_sighandler

import tasklane.worker.task as task_module
from tasklane.worker.app import TasklaneApp
from tasklane.worker.task import ContractTask
from tests.support.harness import BrokerEnv, dead_letters

TASK = "notifier.im.ping"  # the task every worker app implements


@pytest.fixture
def soft_limit_handler() -> Iterator[None]:
    """SIGUSR1 raises SoftTimeLimitExceeded in this process, as in a prefork pool child."""
    before = signal.signal(signal.SIGUSR1, soft_timeout_sighandler)
    yield
    signal.signal(signal.SIGUSR1, before)


def test_the_soft_limits_signal_during_the_write_does_not_lose_the_letter(
    notifier_app: TasklaneApp,
    redis_broker: BrokerEnv,
    soft_limit_handler: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    task: ContractTask = notifier_app.tasks[TASK]
    write = task_module.send_to_dlq
    interrupted: list[bool] = []

    def signalled_as_it_starts(*args: Any, **kwargs: Any) -> None:
        if not interrupted:
            interrupted.append(True)
            # Handled at the next instruction of the write below, as the pool's timer would land.
            os.kill(os.getpid(), signal.SIGUSR1)
        write(*args, **kwargs)

    monkeypatch.setattr(task_module, "send_to_dlq", signalled_as_it_starts)
    task_id = str(uuid.uuid4())
    task.push_request(id=task_id, retries=0, hostname="worker@test", headers={})
    try:
        with caplog.at_level(logging.ERROR, logger="tasklane.worker.task"):
            task.on_failure(SoftTimeLimitExceeded(), task_id, (), {}, None)
    finally:
        task.pop_request()
    assert interrupted == [True]
    assert not caplog.records  # nothing "could not dead-letter"
    (letter,) = [x for x in dead_letters(redis_broker, task.contract.queue) if x.task_id == task_id]
    assert letter.reason == "time-limit"
    assert letter.error_type == "SoftTimeLimitExceeded"
