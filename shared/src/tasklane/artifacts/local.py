"""The ``file://`` artifact store: one directory on a local or shared file system."""

from __future__ import annotations

import builtins
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from tasklane.artifacts.base import (
    RESERVED_PREFIX,
    ArtifactKeyError,
    ArtifactNotFoundError,
    ArtifactStore,
    check_key,
    check_prefix,
)

_TEMP_PREFIX = RESERVED_PREFIX + "tmp-"
_META_PREFIX = RESERVED_PREFIX + "meta-"
_CHUNK = 1024 * 1024


class LocalStore(ArtifactStore):
    """Artifacts as files under ``root``; URIs are ``file:///root/key``.

    Writes are atomic (a temporary file in the target directory, fsynced, then ``os.replace``),
    so readers see the old or the new artifact, never a partial one. The content type lives in a
    hidden sidecar ``.tasklane-meta-<name>.json`` next to the file.
    """

    def __init__(self, root: Path | str) -> None:
        root_path = Path(root)
        if not root_path.is_absolute():
            raise ArtifactKeyError(f"store root {str(root)!r} must be an absolute path")
        # Normalised but not resolved: URIs keep the configured path even through symlinks.
        self._root = Path(os.path.normpath(root_path))

    @property
    def root(self) -> Path:
        """The directory holding the artifacts."""
        return self._root

    def uri(self, key: str) -> str:
        """The ``file://`` URI of ``key``."""
        return self._path_of_key(key).as_uri()

    def put(self, key: str, data: bytes, *, content_type: str) -> str:
        """Store ``data`` atomically under ``key``."""
        return self._store(key, lambda out: out.write(data), content_type)

    def put_file(self, key: str, path: Path, *, content_type: str) -> str:
        """Copy the file at ``path`` atomically under ``key``, in chunks."""
        with path.open("rb") as source:
            return self._store(
                key, lambda out: shutil.copyfileobj(source, out, _CHUNK), content_type
            )

    def get(self, uri: str) -> bytes:
        """The artifact's bytes."""
        with self.open(uri) as stream:
            return stream.read()

    def open(self, uri: str) -> BinaryIO:
        """The artifact's file, open for binary reading."""
        path = self._path_of_uri(uri)
        try:
            return path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ArtifactNotFoundError(uri) from None

    def download(self, uri: str, path: Path) -> None:
        """Copy the artifact to ``path`` atomically."""
        with self.open(uri) as source:
            _write_atomic(path, lambda out: shutil.copyfileobj(source, out, _CHUNK))

    def exists(self, uri: str) -> bool:
        """Whether the artifact's file exists."""
        return self._path_of_uri(uri).is_file()

    def delete(self, uri: str) -> None:
        """Delete the artifact and its sidecar; a missing artifact is ignored."""
        path = self._path_of_uri(uri)
        path.unlink(missing_ok=True)
        _meta_path(path).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> builtins.list[str]:
        """URIs of the artifacts whose keys start with ``prefix``, sorted by key."""
        check_prefix(prefix)
        # Walk only the deepest directory the prefix names, then filter by the whole prefix.
        start = self._root.joinpath(*prefix.split("/")[:-1])
        keys: builtins.list[str] = []
        for directory, _dirs, files in os.walk(start):
            relative = Path(directory).relative_to(self._root).as_posix()
            for name in files:
                if name.startswith(RESERVED_PREFIX):
                    continue
                key = name if relative == "." else f"{relative}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return [self.uri(key) for key in sorted(keys)]

    def content_type(self, uri: str) -> str | None:
        """The content type from the sidecar, or None when the file has no sidecar."""
        path = self._path_of_uri(uri)
        if not path.is_file():
            raise ArtifactNotFoundError(uri)
        try:
            meta = json.loads(_meta_path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        value = meta.get("content_type")
        return value if isinstance(value, str) else None

    def _store(self, key: str, write: Callable[[BinaryIO], object], content_type: str) -> str:
        path = self._path_of_key(key)
        meta = json.dumps({"content_type": content_type}).encode()
        # Sidecar first: once the artifact file exists, its content type is readable too.
        _write_atomic(_meta_path(path), lambda out: out.write(meta))
        _write_atomic(path, write)
        return path.as_uri()

    def _path_of_key(self, key: str) -> Path:
        # Textual checks only (no resolve()): they stop keys escaping the root, while symlinks an
        # operator placed inside the root (a big disk mounted under media/) keep working.
        return self._root.joinpath(*check_key(key).split("/"))

    def _path_of_uri(self, uri: str) -> Path:
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost") or parts.query:
            raise ArtifactKeyError(f"{uri!r} is not a local file:// artifact URI")
        try:
            relative = PurePosixPath(unquote(parts.path)).relative_to(self._root)
        except ValueError:
            raise ArtifactKeyError(
                f"{uri!r} is outside this store ({self._root.as_uri()})"
            ) from None
        return self._path_of_key(relative.as_posix())


def _meta_path(path: Path) -> Path:
    return path.with_name(f"{_META_PREFIX}{path.name}.json")


def _write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` via a temporary file in its directory, fsync, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{_TEMP_PREFIX}{secrets.token_hex(8)}")
    # os.open with 0o666 honours the umask; tempfile.mkstemp would leave the file owner-only.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; directories cannot be opened for fsync on Windows.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
