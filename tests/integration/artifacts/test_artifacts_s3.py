"""The s3:// artifact store against a real local S3-compatible HTTP server (moto).

The behaviour suite of the file:// store runs here unchanged, then S3 specifics: multipart
uploads, stored ContentType, the store's prefix, and error mapping over real HTTP.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from moto.server import ThreadedMotoServer

from tasklane.artifacts import ArtifactNotFoundError, ArtifactStore, open_store
from tasklane.artifacts.s3 import S3Store
from tasklane.errors import PermanentError, TransientError
from tests.unit.tasklane.test_artifacts_file import StoreBehaviour

REGION = "us-east-1"
# Dummy credentials, passed as options: moto accepts any.
CREDENTIALS: dict[str, Any] = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
MB = 1024 * 1024


@pytest.fixture(autouse=True)
def _no_ambient_aws_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The stores must work from their options alone; a developer's AWS profile must not leak in.
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A moto S3 server on a free port of 127.0.0.1, for this module."""
    # Port 0: the OS picks a free port atomically, so parallel runs cannot collide.
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def admin(endpoint: str) -> Iterator[Any]:
    """A plain boto3 client, to look at the server behind the store's back."""
    session = boto3.session.Session(region_name=REGION, **CREDENTIALS)
    client = session.client("s3", endpoint_url=endpoint)
    yield client
    client.close()


@pytest.fixture
def bucket(admin: Any) -> str:
    name = f"tasklane-{uuid.uuid4().hex[:12]}"
    admin.create_bucket(Bucket=name)
    return name


@pytest.fixture
def store(endpoint: str, bucket: str) -> Iterator[ArtifactStore]:
    with open_store(
        f"s3://{bucket}/artifacts",
        endpoint_url=endpoint,
        region_name=REGION,
        # Lowered from 8 MB (5 MB is S3's smallest part) so a 12 MB file takes three parts.
        transfer_config=TransferConfig(multipart_threshold=5 * MB, multipart_chunksize=5 * MB),
        **CREDENTIALS,
    ) as opened:
        yield opened


class TestS3StoreBehaviour(StoreBehaviour):
    pass


def test_large_files_upload_in_parts_and_round_trip(
    store: ArtifactStore, admin: Any, bucket: str, tmp_path: Path
) -> None:
    source = tmp_path / "render.mp4"
    source.write_bytes(os.urandom(12 * MB + 12_345))
    uri = store.put_file("media/render.mp4", source, content_type="video/mp4")
    assert uri == f"s3://{bucket}/artifacts/media/render.mp4"
    head = admin.head_object(Bucket=bucket, Key="artifacts/media/render.mp4")
    # A multipart upload's ETag ends in "-<number of parts>".
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ContentLength"] == source.stat().st_size
    target = tmp_path / "back" / "render.mp4"
    store.download(uri, target)
    assert target.read_bytes() == source.read_bytes()
    assert store.get(uri) == source.read_bytes()


def test_content_type_is_stored_on_the_object(
    store: ArtifactStore, admin: Any, bucket: str, tmp_path: Path
) -> None:
    store.put("reports/a.html", b"<html/>", content_type="text/html; charset=utf-8")
    source = tmp_path / "a.png"
    source.write_bytes(b"\x89PNG")
    store.put_file("media/a.png", source, content_type="image/png")
    head = admin.head_object(Bucket=bucket, Key="artifacts/reports/a.html")
    assert head["ContentType"] == "text/html; charset=utf-8"
    assert admin.head_object(Bucket=bucket, Key="artifacts/media/a.png")["ContentType"] == (
        "image/png"
    )


def test_the_store_sees_only_its_prefix(store: ArtifactStore, admin: Any, bucket: str) -> None:
    admin.put_object(Bucket=bucket, Key="elsewhere/x.txt", Body=b"x")
    admin.put_object(Bucket=bucket, Key="artifacts-old/y.txt", Body=b"y")
    uri = store.put("z.txt", b"z", content_type="text/plain")
    assert store.list() == [uri]
    assert admin.list_objects_v2(Bucket=bucket)["KeyCount"] == 3


def test_a_missing_bucket_is_permanent_not_a_missing_artifact(endpoint: str) -> None:
    with S3Store(
        "no-such-bucket-here", endpoint_url=endpoint, region_name=REGION, **CREDENTIALS
    ) as store:
        with pytest.raises(PermanentError, match="NoSuchBucket") as caught:
            store.put("a.txt", b"a", content_type="text/plain")
    assert not isinstance(caught.value, ArtifactNotFoundError)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_an_unreachable_endpoint_is_transient(tmp_path: Path) -> None:
    with S3Store(
        "bucket",
        endpoint_url=f"http://127.0.0.1:{_closed_port()}",
        region_name=REGION,
        max_attempts=1,
        connect_timeout=2,
        **CREDENTIALS,
    ) as store:
        uri = store.uri("a.txt")
        source = tmp_path / "a.txt"
        source.write_bytes(b"a")
        calls: list[Callable[[], object]] = [
            lambda: store.put("a.txt", b"a", content_type="text/plain"),
            lambda: store.put_file("a.txt", source, content_type="text/plain"),
            lambda: store.get(uri),
            lambda: store.exists(uri),  # must not answer False: the artifact may well exist
            lambda: store.list(),
        ]
        for call in calls:
            with pytest.raises(TransientError, match="127.0.0.1"):
                call()


class _FailingS3(BaseHTTPRequestHandler):
    """Answers every request with the S3 error configured on the server."""

    server: _FailingServer
    # HTTP/1.1 answers botocore's "Expect: 100-continue" at once instead of after its 1 s wait.
    protocol_version = "HTTP/1.1"

    def _fail(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append(f"{self.command} {self.path}")
        status, code = self.server.answer
        body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Retry-After", "7")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_DELETE = _fail

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


class _FailingServer(ThreadingHTTPServer):
    answer: tuple[int, str] = (500, "InternalError")
    requests: list[str]


@pytest.fixture
def failing_server() -> Iterator[_FailingServer]:
    server = _FailingServer(("127.0.0.1", 0), _FailingS3)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (500, "InternalError", TransientError),
        (503, "SlowDown", TransientError),
        (502, "BadGateway", TransientError),  # an unknown code: the 5xx status decides
        (400, "Throttling", TransientError),
        (403, "AccessDenied", PermanentError),
    ],
)
def test_server_errors_map_to_transient_and_refusals_to_permanent(
    failing_server: _FailingServer, status: int, code: str, expected: type[Exception]
) -> None:
    failing_server.answer = (status, code)
    host, port = failing_server.server_address[:2]
    with S3Store(
        "bucket",
        endpoint_url=f"http://{host!s}:{port}",
        region_name=REGION,
        max_attempts=1,
        **CREDENTIALS,
    ) as store:
        for call in (
            lambda: store.put("a.txt", b"a", content_type="text/plain"),
            lambda: store.get(store.uri("a.txt")),
        ):
            with pytest.raises(expected, match=code) as caught:
                call()
            assert type(caught.value) is expected
            if expected is TransientError:
                assert isinstance(caught.value, TransientError)
                assert caught.value.retry_after == 7.0
    # max_attempts=1 means no botocore retries: the worker's retry policy decides instead.
    assert failing_server.requests == ["PUT /bucket/a.txt", "GET /bucket/a.txt"]
