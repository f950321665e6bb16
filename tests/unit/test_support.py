"""The tests' one polling helper: what it returns, when it gives up and what it says then."""

from __future__ import annotations

import time

import pytest

from tests.support import eventually


def test_returns_the_first_truthy_value() -> None:
    calls: list[int] = []

    def check() -> list[int]:
        calls.append(len(calls) + 1)
        return list(calls) if len(calls) >= 3 else []

    assert eventually(check, timeout=5, interval=0, message="three calls") == [1, 2, 3]
    assert len(calls) == 3


def test_a_true_condition_returns_true_without_waiting() -> None:
    started = time.monotonic()
    assert eventually(lambda: True, timeout=5, interval=10, message="nothing") is True
    assert time.monotonic() - started < 1


def test_fails_after_the_timeout_naming_what_it_waited_for_and_the_last_value() -> None:
    calls: list[int] = []

    def check() -> int:
        calls.append(1)
        return 0

    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception) as failed:
        eventually(check, timeout=0.3, interval=0.05, message="the count to grow")
    elapsed = time.monotonic() - started
    assert "waiting for the count to grow" in str(failed.value)
    assert "last value: 0" in str(failed.value)
    assert 0.3 <= elapsed < 2
    assert len(calls) >= 2  # it polled, and looked once more at the deadline


def test_a_callable_message_is_asked_only_on_failure() -> None:
    asked: list[str] = []

    def message() -> str:
        asked.append("asked")
        return "the log to say ready"

    assert eventually(lambda: "ready", timeout=1, message=message) == "ready"
    assert asked == []
    with pytest.raises(pytest.fail.Exception, match="waiting for the log to say ready"):
        eventually(lambda: None, timeout=0, message=message)
    assert asked == ["asked"]


def test_ignored_exceptions_are_retried_and_the_last_one_is_reported() -> None:
    answers: list[str] = []

    def listening() -> str:
        if len(answers) < 2:
            answers.append("refused")
            raise ConnectionRefusedError("port closed")
        return "up"

    assert eventually(listening, timeout=5, interval=0, message="up", ignoring=(OSError,)) == "up"
    with pytest.raises(pytest.fail.Exception) as failed:
        eventually(_refuse, timeout=0.1, message="a server", ignoring=(OSError,))
    assert "last exception: ConnectionRefusedError: port closed" in str(failed.value)


def test_other_exceptions_end_the_wait_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        eventually(_refuse, timeout=10, message="a server", ignoring=(KeyError,))
    assert time.monotonic() - started < 1


def _refuse() -> None:
    raise ConnectionRefusedError("port closed")
