"""The artifact store interface, its errors and the key rules every store shares.

An artifact is a blob stored under a key, a relative POSIX path, and addressed afterwards by the
URI that :meth:`ArtifactStore.put` returns.
Design: docs/media.md#the-artifact-store.
"""

from __future__ import annotations

import builtins
import hashlib
import re
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from tasklane.errors import PermanentError

#: Key segments starting with this are reserved for a store's own files (temporary files and
#: content-type sidecars of :class:`~tasklane.artifacts.local.LocalStore`). Every store refuses
#: them so that a key valid on one store is valid on all of them.
RESERVED_PREFIX = ".tasklane-"

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ArtifactNotFoundError(PermanentError):
    """No artifact exists at the URI."""

    def __init__(self, uri: str) -> None:
        super().__init__(f"artifact not found: {uri}")
        self.uri = uri


class ArtifactKeyError(PermanentError, ValueError):
    """A key or URI is malformed, escapes the store, or belongs to another store."""


def check_key(key: str) -> str:
    """Return ``key`` when it is a safe relative key, else raise :class:`ArtifactKeyError`.

    A key is a relative POSIX path: no leading ``/``, no empty, ``.`` or ``..`` segments, no
    backslashes or NUL bytes and no segment starting with :data:`RESERVED_PREFIX`.
    """
    if not key:
        raise ArtifactKeyError("artifact key is empty")
    if key.startswith("/"):
        raise ArtifactKeyError(f"artifact key {key!r} is absolute; keys are relative paths")
    if "\\" in key or "\x00" in key:
        raise ArtifactKeyError(f"artifact key {key!r} contains a backslash or NUL byte")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise ArtifactKeyError(
                f"artifact key {key!r} has an empty, '.' or '..' segment; "
                "keys must not escape or alias paths in the store"
            )
        if segment.startswith(RESERVED_PREFIX):
            raise ArtifactKeyError(
                f"artifact key {key!r} uses the reserved prefix {RESERVED_PREFIX!r}"
            )
    return key


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` when some valid key could start with it, else raise ArtifactKeyError."""
    # Listing is by string prefix ("reports/2024-" matches "reports/2024-01.csv"), so a prefix
    # is acceptable exactly when it can begin a valid key; "" lists everything.
    check_key(prefix + "x")
    return prefix


def content_key(data_or_sha256: bytes | str, suffix: str = "") -> str:
    """A content-addressed key: ``sha256/ab/cdef….png`` for data whose SHA-256 is ``abcdef…``.

    Args:
        data_or_sha256: The artifact's bytes, or their SHA-256 as 64 hex digits (for large files,
            ``hashlib.file_digest(f, "sha256").hexdigest()``).
        suffix: A file extension such as ``".png"`` (the leading dot may be omitted).

    Raises:
        ArtifactKeyError: A string is not a SHA-256 hex digest, or the suffix contains ``/``.
    """
    if isinstance(data_or_sha256, str):
        digest = data_or_sha256.lower()
        if not _SHA256_HEX.fullmatch(digest):
            raise ArtifactKeyError(
                f"{data_or_sha256!r} is not a SHA-256 hex digest; pass bytes to hash content"
            )
    else:
        digest = hashlib.sha256(data_or_sha256).hexdigest()
    if "/" in suffix or "\\" in suffix:
        raise ArtifactKeyError(f"suffix {suffix!r} must not contain a path separator")
    if suffix and not suffix.startswith("."):
        suffix = "." + suffix
    # Two hex digits of fan-out keep directories (and S3 listings) small, like git's objects/.
    return f"sha256/{digest[:2]}/{digest[2:]}{suffix}"


class ArtifactStore(ABC):
    """Blobs under keys, addressed by URI. Open one with :func:`tasklane.artifacts.open_store`.

    Methods taking a URI accept only URIs of this store and raise :class:`ArtifactKeyError`
    otherwise; reading a missing artifact raises :class:`ArtifactNotFoundError`.
    """

    @abstractmethod
    def uri(self, key: str) -> str:
        """The URI an artifact stored under ``key`` has (whether or not it exists)."""

    @abstractmethod
    def put(self, key: str, data: bytes, *, content_type: str) -> str:
        """Store ``data`` under ``key``, replacing any artifact there, and return its URI."""

    @abstractmethod
    def put_file(self, key: str, path: Path, *, content_type: str) -> str:
        """Store the file at ``path`` under ``key`` without reading it into memory."""

    @abstractmethod
    def get(self, uri: str) -> bytes:
        """The artifact's bytes."""

    @abstractmethod
    def open(self, uri: str) -> BinaryIO:
        """A binary stream reading the artifact; close it (``with store.open(uri) as f:``)."""

    @abstractmethod
    def download(self, uri: str, path: Path) -> None:
        """Write the artifact to ``path`` (parents created), streaming, replacing any file."""

    @abstractmethod
    def exists(self, uri: str) -> bool:
        """Whether an artifact exists at ``uri``."""

    @abstractmethod
    def delete(self, uri: str) -> None:
        """Delete the artifact; deleting a missing artifact is not an error (retries are safe)."""

    @abstractmethod
    def list(self, prefix: str = "") -> builtins.list[str]:
        """URIs of the artifacts whose keys start with ``prefix``, sorted by key."""

    @abstractmethod
    def content_type(self, uri: str) -> str | None:
        """The content type given when the artifact was stored, or None when none is known."""

    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        # Stores without connections (local files) have nothing to release.
        return None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
