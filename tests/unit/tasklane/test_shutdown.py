from __future__ import annotations

import os
import signal
import threading
from types import SimpleNamespace

import pytest

from tasklane.worker import shutdown
from tasklane.worker.shutdown import ShutdownDeadline


def _step(timeout: float) -> ShutdownDeadline:
    worker = SimpleNamespace(app=SimpleNamespace(soft_shutdown_timeout=timeout))
    return ShutdownDeadline(worker)


@pytest.fixture
def kills(monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[int, int]], threading.Event]:
    sent: list[tuple[int, int]] = []
    fired = threading.Event()

    def fake_kill(pid: int, sig: int) -> None:
        sent.append((pid, sig))
        fired.set()

    monkeypatch.setattr(shutdown.os, "kill", fake_kill)
    return sent, fired


def test_a_warm_shutdown_turns_cold_when_the_deadline_passes(
    kills: tuple[list[tuple[int, int]], threading.Event],
) -> None:
    sent, fired = kills
    step = _step(0.3)
    step._on_shutting_down(sig="SIGTERM", how="Warm", exitcode=0)
    step._on_shutting_down(sig="SIGTERM", how="Warm", exitcode=0)  # a second SIGTERM: one timer
    assert not sent  # not before the deadline
    assert fired.wait(5)
    threading.Event().wait(0.5)  # room for a second timer to fire, if there were one
    assert sent == [(os.getpid(), signal.SIGQUIT)]


def test_a_cold_shutdown_is_left_alone(
    kills: tuple[list[tuple[int, int]], threading.Event],
) -> None:
    sent, fired = kills
    _step(0.0)._on_shutting_down(sig="SIGQUIT", how="Cold", exitcode=1)
    assert not fired.wait(0.2)
    assert sent == []


def test_remap_sigterm_is_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("REMAP_SIGTERM", "SIGQUIT")
    _step(30.0)
    assert "REMAP_SIGTERM=SIGQUIT is set" in caplog.text
