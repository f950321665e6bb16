"""The soft limit's real signal, sent at each point where CPython checks for signals."""

from __future__ import annotations

import dis
import signal
import sys
from functools import cache
from types import CodeType, FrameType
from typing import Any

from media.soft_limit import SOFT_LIMIT_SIGNAL


@cache
def _jumps_back(code: CodeType) -> frozenset[int]:
    return frozenset(
        instruction.offset
        for instruction in dis.get_instructions(code)
        if instruction.opname == "JUMP_BACKWARD"
    )


class SignalAt:
    """Sends the soft limit's real signal at the ``n``-th point where Python checks for signals.

    The points are those of CPython's evaluation loop: entering a function, after each call
    (of a Python or a C function), each jump back of a loop. A trace function raising there is
    what a signal handled there does: after a call, the exception belongs to the call, inside
    any ``try`` around it. The signal is raised with ``signal.raise_signal``, so a mask that
    holds it back defers it as it would the pool's; otherwise it lands right there.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0
        self.previous = (sys.gettrace(), sys.getprofile())  # a coverage or debugger tracer

    @property
    def sent(self) -> bool:
        return self.seen >= self.n

    def start(self) -> None:
        """Stopped with ``stop``, a plain function: a method of this class would be traced."""
        sys.setprofile(self._profile)
        sys.settrace(self._trace)

    def _point(self) -> None:
        self.seen += 1
        if self.seen == self.n:
            stop(self.previous)
            assert SOFT_LIMIT_SIGNAL is not None
            signal.raise_signal(SOFT_LIMIT_SIGNAL)

    def _trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        if self.sent or frame.f_code is stop.__code__:
            return None
        frame.f_trace_opcodes = True
        if event in {"call", "return"} or (
            event == "opcode" and frame.f_lasti in _jumps_back(frame.f_code)
        ):
            self._point()
        return self._trace

    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_return" and not self.sent and arg not in {sys.settrace, sys.setprofile}:
            self._point()


def stop(previous: tuple[Any, Any]) -> None:
    sys.settrace(previous[0])
    sys.setprofile(previous[1])
