"""Tests of code that publishes: capture what it publishes instead of sending it to a broker.

``capture_publishes()`` (a context manager), the ``tasklane_published`` pytest fixture
(``pytest_plugins = ["tasklane.contrib.django.pytest_plugin"]``) and
:class:`TasklanePublishesMixin` for ``unittest``/Django test cases.
"""

from __future__ import annotations

import json
import unittest
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tasklane.contracts import TaskContract
from tasklane.contrib.django.publishing import Via, recording
from tasklane.wire.protocol import TaskMessage

__all__ = ["Published", "TasklanePublishesMixin", "capture_publishes"]


@dataclass(frozen=True)
class Published:
    """One captured publish: the payload as it was encoded (defaults filled in)."""

    contract: str
    payload: dict[str, Any]
    task_id: str
    via: Via


@contextmanager
def capture_publishes() -> Iterator[list[Published]]:
    """Capture every publish made inside the block, in order; none reaches a broker.

    ``publish`` is recorded at once; ``publish_on_commit`` when its transaction commits (never
    for a rollback; in a Django ``TestCase`` under ``captureOnCommitCallbacks(execute=True)``);
    with the outbox on, when its row is written (the row is still written).
    """
    captured: list[Published] = []

    def record(contract: str, message: TaskMessage, via: Via) -> None:
        _, kwargs, _ = json.loads(message.body)
        captured.append(Published(contract, kwargs, message.task_id, via))

    with recording(record):
        yield captured


if TYPE_CHECKING:
    _TestCaseBase = unittest.TestCase
else:
    _TestCaseBase = object


class TasklanePublishesMixin(_TestCaseBase):
    """Captures each test's publishes in ``self.tasklane_published``; mix into a ``TestCase``."""

    tasklane_published: list[Published]

    def setUp(self) -> None:
        super().setUp()
        self.tasklane_published = self.enterContext(capture_publishes())

    def assertPublished(  # noqa: N802 (unittest's naming)
        self, contract: str | TaskContract[Any, Any], **payload_subset: Any
    ) -> Published:
        """The first capture of ``contract`` whose payload holds ``payload_subset``; else fail."""
        name = contract.name if isinstance(contract, TaskContract) else contract
        for published in self.tasklane_published:
            if published.contract == name and all(
                published.payload.get(key, _MISSING) == value
                for key, value in payload_subset.items()
            ):
                return published
        seen = "\n".join(f"  {p.contract} ({p.via}): {p.payload}" for p in self.tasklane_published)
        raise self.failureException(
            f"no {name} published with {payload_subset}; published:\n{seen or '  nothing'}"
        )


_MISSING = object()
