"""Artifact stores: crawl data, reports and media outputs addressed by URI.

Open a store from configuration with :func:`open_store`, one per worker process, and pass the URIs
that :meth:`ArtifactStore.put` returns in task results.
Design: docs/media.md#the-artifact-store.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from tasklane.artifacts.base import (
    ArtifactKeyError,
    ArtifactNotFoundError,
    ArtifactStore,
    content_key,
)
from tasklane.artifacts.local import LocalStore
from tasklane.errors import SettingsError

SUPPORTED_SCHEMES = ("file", "s3")


def open_store(base_uri: str, **options: Any) -> ArtifactStore:
    """Open the store ``base_uri`` names: ``file:///abs/dir`` or ``s3://bucket/prefix``.

    Args:
        base_uri: Where artifacts live.
        **options: Keyword arguments of :class:`tasklane.artifacts.s3.S3Store`
            (``endpoint_url``, ``region_name``, credentials, ``transfer_config``, …);
            ``file://`` stores take none.

    Raises:
        SettingsError: The scheme is not supported, the URI is malformed, an option does not
            apply, or boto3 is missing for ``s3://``.
    """
    parts = urlsplit(base_uri)
    if parts.query or parts.fragment:
        raise SettingsError(f"artifact store URI {base_uri!r} must not have a query or fragment")
    if parts.scheme == "file":
        return _open_local(base_uri, parts.netloc, unquote(parts.path), options)
    if parts.scheme == "s3":
        return _open_s3(base_uri, parts.netloc, parts.path, options)
    supported = ", ".join(f"{scheme}://" for scheme in SUPPORTED_SCHEMES)
    raise SettingsError(
        f"unsupported artifact store URI {base_uri!r}: the scheme must be one of {supported}"
    )


def _open_local(base_uri: str, host: str, path: str, options: dict[str, Any]) -> ArtifactStore:
    if options:
        raise SettingsError(f"file:// artifact stores take no options, got {sorted(options)}")
    if host not in ("", "localhost") or not path.startswith("/"):
        raise SettingsError(
            f"artifact store URI {base_uri!r} must name an absolute local path: file:///abs/dir"
        )
    return LocalStore(path)


def _open_s3(base_uri: str, bucket: str, prefix: str, options: dict[str, Any]) -> ArtifactStore:
    if not bucket:
        raise SettingsError(f"artifact store URI {base_uri!r} must name a bucket: s3://bucket/…")
    try:
        # Imported here: boto3 is the optional tasklane[s3] extra.
        from tasklane.artifacts.s3 import S3Store
    except ImportError as exc:
        raise SettingsError(
            f"s3:// artifact stores need boto3: install tasklane[s3] ({exc})"
        ) from exc
    try:
        return S3Store(bucket, prefix, **options)
    except TypeError as exc:
        raise SettingsError(f"invalid option for an s3:// artifact store: {exc}") from exc
    except ArtifactKeyError as exc:
        raise SettingsError(f"artifact store URI {base_uri!r}: {exc}") from exc


__all__ = [
    "ArtifactKeyError",
    "ArtifactNotFoundError",
    "ArtifactStore",
    "LocalStore",
    "SUPPORTED_SCHEMES",
    "content_key",
    "open_store",
]
