"""The gateway's sender: single publishes that wait behind a send go to the broker together.

A real Publisher on Redis; the sender's thread is held on a batch job until the test lets it
go, so what queued behind it is known exactly. The publisher counts its ``send`` calls (the
messages go to the broker as always).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from tasklane.contracts.notifier import SEND_EMAIL
from tasklane.gateway.sender import QueuedTooLongError, Sender
from tasklane.publish import Publisher
from tasklane.wire.protocol import TaskMessage
from tests.support.gateway import waiting
from tests.support.harness import BrokerEnv

EMAIL = {"to": ["ada@example.com"], "subject": "Hello", "text": "Hi"}


class CountingPublisher(Publisher):
    """A Publisher that notes how many messages each ``send`` carried."""

    sends: list[int]

    def send(self, task: Any, messages: list[TaskMessage], *, batch_size: int = 1000) -> None:
        self.sends.append(len(messages))
        super().send(task, messages, batch_size=batch_size)


async def behind_a_held_send(
    sender: Sender, publisher: Publisher, deadlines: list[float]
) -> list[BaseException | None]:
    """Hold the sender's thread, queue one single publish per deadline, let it go."""
    entered, release = threading.Event(), threading.Event()

    def held() -> None:
        entered.set()
        release.wait(30)

    loop = asyncio.get_running_loop()
    holding = sender.call(SEND_EMAIL, held, time.monotonic() + 30)
    assert await loop.run_in_executor(None, entered.wait, 30)
    singles = [
        sender.send(SEND_EMAIL, publisher.encode(SEND_EMAIL, EMAIL), deadline)
        for deadline in deadlines
    ]
    release.set()
    await holding
    outcomes = await asyncio.gather(*singles, return_exceptions=True)
    return [outcome if isinstance(outcome, BaseException) else None for outcome in outcomes]


@pytest.fixture
def publisher(redis_broker: BrokerEnv) -> Any:
    with CountingPublisher(redis_broker.settings) as counting:
        counting.sends = []
        yield counting


def test_singles_queued_behind_a_send_go_to_the_broker_in_one_send(
    publisher: CountingPublisher, redis_broker: BrokerEnv
) -> None:
    sender = Sender(publisher)
    try:
        later = time.monotonic() + 30
        outcomes = asyncio.run(behind_a_held_send(sender, publisher, [later] * 5))
    finally:
        sender.close(10)

    assert outcomes == [None] * 5
    assert publisher.sends == [5]
    assert waiting(redis_broker, "notifier.email") == 5


def test_a_single_whose_turn_comes_after_its_deadline_is_not_sent(
    publisher: CountingPublisher, redis_broker: BrokerEnv
) -> None:
    sender = Sender(publisher)
    try:
        past, later = time.monotonic() - 1, time.monotonic() + 30
        outcomes = asyncio.run(behind_a_held_send(sender, publisher, [past, later]))
    finally:
        sender.close(10)

    assert isinstance(outcomes[0], QueuedTooLongError) and outcomes[1] is None
    assert publisher.sends == [1]
    assert waiting(redis_broker, "notifier.email") == 1
