"""The gateway's broker side: one thread sends what the requests hand it, several at a time.

Single publishes that arrive while a send is under way go to the broker together in the next
one (one pipeline per contract), so a busy gateway pays the broker's round trip and Kombu's
per-call cost once for many requests, and no request thread contends for the publisher's lock.
A request whose turn comes after its deadline is not sent (the caller answers 503); during a
broker outage the thread waits it out as :meth:`Publisher.send` does, and the event loop never
does. Batches are sent alone, as :meth:`Publisher.publish_many` sends them.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tasklane.contracts import TaskContract
from tasklane.errors import BrokerUnavailableError
from tasklane.publish import Publisher
from tasklane.wire.protocol import TaskMessage

#: Most single publishes sent together.
MAX_TOGETHER = 256


class QueuedTooLongError(Exception):
    """A publish waited for its turn past its deadline; it was not attempted."""


@dataclass
class _Job:
    contract: TaskContract[Any, Any]
    deadline: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    message: TaskMessage | None = None  # a single publish, encoded on the loop
    send_batch: Callable[[], None] | None = None  # a batch, sent alone
    done: bool = field(default=False)

    def settle(self, error: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        self.loop.call_soon_threadsafe(_settle, self.future, error)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # the request went away meanwhile
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


class Sender:
    """Sends single messages together and batches alone, on one thread of its own."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="gateway-sender", daemon=True)
        self._thread.start()

    def send(
        self, contract: TaskContract[Any, Any], message: TaskMessage, deadline: float
    ) -> asyncio.Future[None]:
        """Send one encoded message; the future is done once the broker took it."""
        loop = asyncio.get_running_loop()
        job = _Job(contract, deadline, loop, loop.create_future(), message=message)
        self._jobs.put(job)
        return job.future

    def call(
        self, contract: TaskContract[Any, Any], send_batch: Callable[[], None], deadline: float
    ) -> asyncio.Future[None]:
        """Run ``send_batch`` (a whole batch's publish) on the sender's thread, alone."""
        loop = asyncio.get_running_loop()
        job = _Job(contract, deadline, loop, loop.create_future(), send_batch=send_batch)
        self._jobs.put(job)
        return job.future

    def close(self, timeout: float) -> None:
        """Finish what was handed over, then stop the thread."""
        self._jobs.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            jobs = [job]
            while len(jobs) < MAX_TOGETHER and jobs[-1].send_batch is None:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._jobs.put(None)  # stop after this round
                    break
                jobs.append(more)
            self._round(jobs)

    def _round(self, jobs: list[_Job]) -> None:
        now = time.monotonic()
        singles: dict[str, list[_Job]] = {}
        for job in jobs:
            if now > job.deadline:
                job.settle(QueuedTooLongError())
            elif job.send_batch is not None:
                self._guarded(job, job.send_batch)
            else:
                singles.setdefault(job.contract.name, []).append(job)
        for group in singles.values():
            self._send_together(group)

    def _guarded(self, job: _Job, action: Callable[[], None]) -> None:
        try:
            action()
        except BaseException as exc:  # handed to the request, which answers for it
            job.settle(exc)
        else:
            job.settle(None)

    def _send_together(self, group: list[_Job]) -> None:
        messages = [job.message for job in group if job.message is not None]
        try:
            self._publisher.send(group[0].contract, messages)
        except BrokerUnavailableError as exc:
            # The broker took the first ``sent``: those requests succeeded, the rest did not.
            for job in group[: exc.sent]:
                job.settle(None)
            for job in group[exc.sent :]:
                job.settle(exc)
        except BaseException as exc:
            for job in group:
                job.settle(exc)
        else:
            for job in group:
                job.settle(None)
