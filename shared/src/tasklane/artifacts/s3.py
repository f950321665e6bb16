"""The ``s3://`` artifact store, on AWS S3 or any S3-compatible server (``endpoint_url``).

Needs the ``tasklane[s3]`` extra (boto3). Each store owns one boto3 client: clients are
thread-safe, but their connection pools must not cross a fork, so a prefork worker child should
open its own store (for example in a ``worker_process_init`` handler) rather than inherit one.
"""

from __future__ import annotations

import builtins
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

import boto3
import boto3.exceptions
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from tasklane.artifacts.base import (
    ArtifactKeyError,
    ArtifactNotFoundError,
    ArtifactStore,
    check_key,
    check_prefix,
)
from tasklane.errors import PermanentError, TasklaneError, TransientError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
# Codes S3 and S3-compatible servers use for "slow down"/"try again"; botocore has already
# retried them max_attempts times when they reach us.
_TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "InternalError",
        "ServiceUnavailable",
    }
)
# Failures to reach or keep talking to the endpoint: connection refused, DNS, timeouts, resets.
_NETWORK_ERRORS = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.IncompleteReadError,
    boto3.exceptions.RetriesExceededError,
)


class S3Store(ArtifactStore):
    """Artifacts as objects under ``prefix`` in ``bucket``; URIs are ``s3://bucket/prefix/key``.

    Credentials and region come from the arguments, else from boto3's standard chain
    (``AWS_ACCESS_KEY_ID``, ``AWS_REGION``, ``~/.aws``, instance roles).

    Args:
        bucket: The bucket, which must exist.
        prefix: A key prefix every artifact of this store lives under ("" for the whole bucket).
        endpoint_url: An S3-compatible server such as ``http://127.0.0.1:9000``.
        region_name: The AWS region.
        aws_access_key_id: The access key id.
        aws_secret_access_key: The secret key.
        aws_session_token: A session token for temporary credentials.
        profile_name: A profile of ``~/.aws/config``.
        addressing_style: ``"path"`` for servers without virtual-host buckets.
        max_attempts: Attempts per request, including botocore's own retries.
        connect_timeout: Seconds to wait for a connection.
        read_timeout: Seconds to wait for data on a connection.
        transfer_config: Multipart threshold, part size and concurrency of ``put_file`` and
            ``download``.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        profile_name: str | None = None,
        addressing_style: Literal["auto", "virtual", "path"] | None = None,
        max_attempts: int | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        transfer_config: TransferConfig | None = None,
    ) -> None:
        if not bucket:
            raise ArtifactKeyError("an s3:// store needs a bucket")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self._bucket = bucket
        self._prefix = f"{prefix}/" if prefix else ""
        self._base = f"s3://{bucket}/{self._prefix}"
        self._transfer = transfer_config or TransferConfig()
        # "standard" mode: bounded backoff for throttling and 5xx. "total_max_attempts" counts
        # the first request too, unlike the legacy "max_attempts" key (which counts retries).
        retries: dict[str, Any] = {"mode": "standard"}
        if max_attempts is not None:
            retries["total_max_attempts"] = max_attempts
        config = Config(  # 60 s timeouts are botocore's defaults
            connect_timeout=60 if connect_timeout is None else connect_timeout,
            read_timeout=60 if read_timeout is None else read_timeout,
            retries=retries,
            s3={"addressing_style": addressing_style} if addressing_style else None,
        )
        # A session of our own, not boto3's module-level default one: no shared global state.
        session = boto3.session.Session(
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            aws_session_token=aws_session_token,
            region_name=region_name,
            profile_name=profile_name,
        )
        self._client: Any = session.client("s3", endpoint_url=endpoint_url, config=config)

    def uri(self, key: str) -> str:
        """The ``s3://`` URI of ``key``."""
        return self._base + check_key(key)

    def put(self, key: str, data: bytes, *, content_type: str) -> str:
        """Upload ``data`` in one request, with its ContentType."""
        uri = self.uri(key)
        with _s3_errors(uri):
            self._client.put_object(
                Bucket=self._bucket, Key=self._key(uri), Body=data, ContentType=content_type
            )
        return uri

    def put_file(self, key: str, path: Path, *, content_type: str) -> str:
        """Upload the file with boto3's transfer manager (multipart above the threshold)."""
        uri = self.uri(key)
        with _s3_errors(uri):
            self._client.upload_file(
                str(path),
                self._bucket,
                self._key(uri),
                ExtraArgs={"ContentType": content_type},
                Config=self._transfer,
            )
        return uri

    def get(self, uri: str) -> bytes:
        """The object's bytes."""
        key = self._key(uri)
        with _s3_errors(uri):
            body = self._client.get_object(Bucket=self._bucket, Key=key)["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
        return data

    def open(self, uri: str) -> BinaryIO:
        """A buffered stream over the object's body; network errors map to TransientError."""
        key = self._key(uri)
        with _s3_errors(uri):
            body = self._client.get_object(Bucket=self._bucket, Key=key)["Body"]
        return io.BufferedReader(_BodyReader(body, uri), buffer_size=256 * 1024)

    def download(self, uri: str, path: Path) -> None:
        """Download with the transfer manager, which writes a temporary file and renames it."""
        key = self._key(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _s3_errors(uri):
            self._client.download_file(self._bucket, key, str(path), Config=self._transfer)

    def exists(self, uri: str) -> bool:
        """Whether the object exists (a HEAD request)."""
        try:
            self._head(uri)
        except ArtifactNotFoundError:
            return False
        return True

    def delete(self, uri: str) -> None:
        """Delete the object; S3 ignores missing objects."""
        key = self._key(uri)
        with _s3_errors(uri):
            self._client.delete_object(Bucket=self._bucket, Key=key)

    def list(self, prefix: str = "") -> builtins.list[str]:
        """URIs of the objects whose keys (below the store's prefix) start with ``prefix``."""
        check_prefix(prefix)
        uris: builtins.list[str] = []
        with _s3_errors(self._base + prefix):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=self._prefix + prefix
            )
            for page in pages:
                uris.extend(
                    f"s3://{self._bucket}/{item['Key']}" for item in page.get("Contents", ())
                )
        return uris

    def content_type(self, uri: str) -> str | None:
        """The object's ContentType."""
        value = self._head(uri).get("ContentType")
        return value if isinstance(value, str) else None

    def close(self) -> None:
        """Close the client's connection pool."""
        self._client.close()

    def _head(self, uri: str) -> dict[str, Any]:
        key = self._key(uri)
        with _s3_errors(uri):
            response: dict[str, Any] = self._client.head_object(Bucket=self._bucket, Key=key)
        return response

    def _key(self, uri: str) -> str:
        # Textual, not urlsplit: S3 keys may contain "?" and "#", which s3:// URIs leave as is.
        if not uri.startswith(self._base) or uri == self._base:
            raise ArtifactKeyError(f"{uri!r} is not an artifact of this store ({self._base})")
        return uri[len("s3://") + len(self._bucket) + 1 :]


class _BodyReader(io.RawIOBase):
    """A botocore StreamingBody as a raw stream whose network errors become TransientError."""

    def __init__(self, body: Any, uri: str) -> None:
        self._body = body
        self._uri = uri

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        with _s3_errors(self._uri):
            data: bytes = self._body.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


@contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    """Translate boto3/botocore failures into Tasklane's error families."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        raise _from_client_error(exc, uri) from exc
    except boto3.exceptions.S3UploadFailedError as exc:
        # boto3 wraps the ClientError of a failed transfer without chaining it explicitly.
        cause = exc.__context__
        if isinstance(cause, botocore.exceptions.ClientError):
            raise _from_client_error(cause, uri) from exc
        raise TransientError(f"S3 upload of {uri} failed: {exc}") from exc
    except _NETWORK_ERRORS as exc:
        raise TransientError(f"S3 unreachable for {uri}: {exc}") from exc


def _from_client_error(exc: botocore.exceptions.ClientError, uri: str) -> TasklaneError:
    error = exc.response.get("Error", {})
    meta = exc.response.get("ResponseMetadata", {})
    code = str(error.get("Code", ""))
    status = int(meta.get("HTTPStatusCode") or 0)
    if code in _NOT_FOUND_CODES:
        return ArtifactNotFoundError(uri)
    if status >= 500 or status == 429 or code in _TRANSIENT_CODES:
        return TransientError(
            f"S3 failed for {uri}: {code or status}: {error.get('Message', '')}",
            retry_after=_retry_after(meta.get("HTTPHeaders", {})),
        )
    # Access denied, missing bucket, invalid request: retrying will not help.
    return PermanentError(f"S3 refused {uri}: {code or status}: {error.get('Message', '')}")


def _retry_after(headers: dict[str, str]) -> float | None:
    try:
        return float(headers["retry-after"])
    except (KeyError, ValueError):
        return None
