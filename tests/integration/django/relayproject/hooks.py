"""A test's view into a relay process: every send it makes is logged, and the first may stall.

``install(directory, stall)`` wraps ``Publisher.send``: after each send the broker took, its task
ids are appended to ``directory/sends.log``. With ``stall``, after the first the ids also go to
``directory/stalled`` and the send does not return until something opens the FIFO
``directory/release`` for writing: the relay is then in the middle of a batch, sent and not yet
marked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tasklane.publish import Publisher
from tasklane.wire.protocol import TaskMessage

SENDS = "sends.log"
STALLED = "stalled"
RELEASE = "release"


def install(directory: str, *, stall: bool) -> None:
    """Wrap ``Publisher.send`` in this process to log every send (and stall the first)."""
    path = Path(directory)
    original = Publisher.send
    stalled: list[bool] = [] if stall else [False]

    def send(self: Publisher, task: Any, messages: list[TaskMessage], **options: Any) -> None:
        original(self, task, messages, **options)
        ids = " ".join(message.task_id for message in messages)
        with (path / SENDS).open("a") as log:
            log.write(ids + "\n")
        if stalled:
            return
        stalled.append(True)
        partial = path / f"{STALLED}.part"
        partial.write_text(ids)
        partial.rename(path / STALLED)
        with open(path / RELEASE, "rb"):  # blocks until the test opens it for writing
            pass

    Publisher.send = send  # type: ignore[method-assign]


def prepare(directory: Path) -> None:
    """Make ``directory``'s release FIFO (before the relay starts)."""
    os.mkfifo(directory / RELEASE)


def release(directory: Path) -> None:
    """Let the stalled send return."""
    fd = os.open(directory / RELEASE, os.O_WRONLY)
    os.close(fd)


def stalled_ids(directory: Path) -> list[str] | None:
    """The task ids of the stalled send, once it stalled."""
    path = directory / STALLED
    return path.read_text().split() if path.exists() else None


def sent_ids(directory: Path) -> list[str]:
    """Every task id the broker took, in order, one entry per send."""
    path = directory / SENDS
    return path.read_text().split() if path.exists() else []
