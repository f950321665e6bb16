"""Bring a task's input to a local file: from the artifact store or over http(s), capped.

Plain domain code: no Celery. Remote sources go through the SSRF guard (every redirect hop
checked); artifact URIs must belong to the configured store, so a payload cannot name an
arbitrary file of the worker's machine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx

from tasklane.artifacts import ArtifactStore
from tasklane.errors import PermanentError, TransientError

CHUNK = 1024 * 1024


class SourceTooLargeError(PermanentError):
    """The input is over the byte limit of its kind."""


@dataclass(frozen=True)
class Source:
    """A local copy of a task's input and the SHA-256 of its bytes."""

    path: Path
    sha256: str
    bytes: int


def fetch_source(
    uri: str, target: Path, *, store: ArtifactStore, http: httpx.Client, max_bytes: int
) -> Source:
    """Copy ``uri`` to ``target``, refusing more than ``max_bytes``.

    Raises:
        SourceTooLargeError: over ``max_bytes`` (declared or read).
        ArtifactNotFoundError, ArtifactKeyError: not in the store, or not a URI of the store.
        UnsafeURLError: a remote source the guard refuses.
        TransientError: the network or the server failed (worth retrying).
        PermanentError: any other 4xx answer.
    """
    if uri.split(":", 1)[0].lower() in ("http", "https"):
        return _download(uri, target, http, max_bytes)
    with store.open(uri) as stream:
        return _copy(stream, target, max_bytes, uri)


def _download(url: str, target: Path, http: httpx.Client, max_bytes: int) -> Source:
    try:
        with http.stream("GET", url) as response:
            _check_status(response, url)
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise SourceTooLargeError(f"{url}: {declared} bytes, over the limit of {max_bytes}")
            digest = hashlib.sha256()
            size = 0
            with target.open("wb") as out:
                for chunk in response.iter_bytes(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise SourceTooLargeError(f"{url}: over the limit of {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
    except httpx.TimeoutException as exc:
        raise TransientError(f"{url}: timed out: {exc}") from exc
    except httpx.TransportError as exc:
        raise TransientError(f"{url}: connection failed: {exc}") from exc
    return Source(target, digest.hexdigest(), size)


def _check_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if status == 429 or status >= 500:
        raise TransientError(f"{url}: HTTP {status}")
    if status >= 300:
        raise PermanentError(f"{url}: HTTP {status}")


def _copy(stream: BinaryIO, target: Path, max_bytes: int, uri: str) -> Source:
    digest = hashlib.sha256()
    size = 0
    with target.open("wb") as out:
        while chunk := stream.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise SourceTooLargeError(f"{uri}: over the limit of {max_bytes} bytes")
            digest.update(chunk)
            out.write(chunk)
    return Source(target, digest.hexdigest(), size)


def output_key(task: str, source: Source, options: str, suffix: str) -> str:
    """Where an output goes: fixed by the task, the input's bytes and the options.

    A redelivered or repeated task writes the same key again (the store's puts are atomic),
    so outputs never pile up; a changed input or option gives a new key.
    """
    digest = hashlib.sha256(f"{task}\n{source.sha256}\n{options}".encode()).hexdigest()
    return f"media/{task.split('.')[1]}/{digest[:2]}/{digest}{suffix}"
