"""`make up` stops cleanly: every process of the demo stack ends and its temporary files go.

Each case starts the stack (embedded Valkey, the watchdog, notifier and scraper workers with their
pools), records every process of it while it is up, sends one signal and waits for all of them
to be gone. The make cases run the Makefile's own `up` recipe on this test's virtualenv.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import eventually

REPO = Path(__file__).parents[3]
VENV = Path(sys.prefix)
START_TIMEOUT = 150.0
STOP_TIMEOUT = 60.0  # a worker's bounded warm shutdown (10 s) and the broker, on busy cores


@dataclass
class Stack:
    """A running `make up` or demo process, its output read as it comes."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    recorded: dict[int, tuple[int, str]] = field(default_factory=dict)

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def shown(self, label: str) -> str:
        match = re.search(rf"^{label}: (.+)$", self.output, re.MULTILINE)
        assert match, self.output
        return match.group(1).strip()


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a process, or None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)"; comm may hold spaces
    return int(fields[1]), fields[0], int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stack_processes(root: int, marks: list[str]) -> dict[int, tuple[int, str]]:
    """Every descendant of ``root`` and every process whose command line shows one of ``marks``
    (a re-parented one too): pid -> (start time, command line)."""
    table = {pid: stat for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
             if (stat := _stat(pid))}  # fmt: skip
    found = {root}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _, _) in table.items() if ppid in found} - found
        grew = bool(more)
        found |= more
    found |= {pid for pid in table if any(mark in _cmdline(pid) for mark in marks)}
    found.discard(os.getpid())
    return {pid: (table[pid][2], _cmdline(pid)) for pid in found if pid in table}


def still_running(recorded: dict[int, tuple[int, str]]) -> list[str]:
    """The recorded processes still alive (a zombie is dead; the same pid reused is another)."""
    alive = []
    for pid, (started, command) in recorded.items():
        stat = _stat(pid)
        if stat and stat[2] == started and stat[1] != "Z":
            alive.append(f"{pid} {command}")
    return alive


@pytest.fixture
def start_stack(tmp_path: Path) -> Iterator[Callable[[str], Stack]]:
    started: list[Stack] = []

    def start(via: str) -> Stack:
        scratch = tmp_path / "tmp"
        scratch.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("TASKLANE_BROKER_URL", "REDIS_URL")}
        env |= {"TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        if via == "make":
            # The real recipe, on this virtualenv: -o keeps make from syncing it.
            command = ["make", "-s", "-f", str(REPO / "Makefile"), "-o", f"{VENV}/.synced",
                       "up", f"DEMO_VENV={VENV}"]  # fmt: skip
        else:
            command = [sys.executable, "-m", "tasklane_dev.demo", "--keep-running"]
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own group, as a terminal's foreground job has
        )
        stack = Stack(process)
        threading.Thread(target=stack.read, daemon=True).start()
        started.append(stack)
        return stack

    yield start
    for stack in started:  # a failed case must not leave its stack behind
        if stack.process.poll() is None:
            os.killpg(stack.process.pid, signal.SIGKILL)
            stack.process.wait()
        for line in still_running(stack.recorded):
            os.kill(int(line.split()[0]), signal.SIGKILL)


CASES = [
    # make passes SIGTERM on to its recipe; SIGHUP and SIGINT it does not, it only waits for it.
    pytest.param("make", "make", signal.SIGTERM, -signal.SIGTERM, id="SIGTERM-to-make"),
    pytest.param("make", "make", signal.SIGHUP, -signal.SIGHUP, id="SIGHUP-to-make"),
    # Ctrl-C at a terminal: SIGINT to the whole foreground group (make, demo, Valkey).
    pytest.param("make", "group", signal.SIGINT, -signal.SIGINT, id="Ctrl-C-through-make"),
    pytest.param("python", "python", signal.SIGTERM, 128 + signal.SIGTERM, id="SIGTERM-to-demo"),
    # Nothing of the demo runs after SIGKILL: its watchdog stops the stack.
    pytest.param("python", "python", signal.SIGKILL, -signal.SIGKILL, id="SIGKILL-to-demo"),
]


@pytest.mark.parametrize(("via", "target", "signum", "status"), CASES)
def test_a_stop_signal_ends_every_process_of_the_stack_and_removes_its_temporary_files(
    start_stack: Callable[[str], Stack],
    tmp_path: Path,
    via: str,
    target: str,
    signum: int,
    status: int,
) -> None:
    stack = start_stack(via)
    eventually(
        lambda: "stack is up" in stack.output or stack.process.poll() is not None,
        timeout=START_TIMEOUT,
        message=lambda: f"the stack to come up; output:\n{stack.output}",
        interval=0.2,
    )
    assert stack.process.poll() is None, stack.output
    logs = Path(stack.shown("worker logs"))
    port = re.search(r"TASKLANE_BROKER_URL=redis://127\.0\.0\.1:(\d+)", stack.output)
    assert port, stack.output
    recorded = stack_processes(stack.process.pid, [str(logs), f"127.0.0.1:{port.group(1)}"])
    stack.recorded = recorded
    commands = " ".join(command for _, command in recorded.values())
    for part in ("tasklane_dev.demo", "tasklane_dev.reaper", "valkey-server",
                 "notifier.app worker", "scraper.app worker"):  # fmt: skip
        assert part in commands, recorded
    assert logs.is_dir() and logs.is_relative_to(tmp_path / "tmp")

    # The banner's command lines reach the stack from another shell, as printed.
    banner = stack.output.split("reaches this stack:\n", 1)[1].splitlines()
    assert banner[0].strip().startswith("export TASKLANE_BROKER_URL="), stack.output
    assert banner[2].strip() == f"{VENV}/bin/tasklane dlq list", stack.output
    shell = subprocess.run(
        ["bash", "-c", f"{banner[0]}\n{banner[2]}"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("TASKLANE_")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shell.returncode == 0 and "demo.notifier.email.dlq" in shell.stdout, shell

    demo = stack.process.pid
    if via == "make":
        [demo] = [pid for pid, (_, cmd) in recorded.items() if "-m tasklane_dev.demo" in cmd]
    if target == "group":
        os.killpg(stack.process.pid, signum)
    else:
        os.kill(stack.process.pid if target == "make" else demo, signum)

    eventually(
        lambda: not still_running(recorded),
        timeout=STOP_TIMEOUT,
        message=lambda: f"the stack to stop; running: {still_running(recorded)}",
        interval=0.2,
    )
    assert stack.process.wait(10) == status, stack.output
    # Worker logs, pool scratch files and Valkey's data: nothing is left in the temporary folder.
    assert not logs.exists()
    assert list((tmp_path / "tmp").iterdir()) == []
    if signum != signal.SIGKILL:
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        assert name in stack.output, stack.output
