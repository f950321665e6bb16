"""The file:// artifact store, key rules and the store factory.

:class:`StoreBehaviour` is the behaviour every store must have; the s3:// integration tests run
it again against a local S3 server.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tasklane.artifacts import (
    ArtifactKeyError,
    ArtifactNotFoundError,
    ArtifactStore,
    LocalStore,
    content_key,
    open_store,
)
from tasklane.errors import PermanentError, SettingsError

BAD_KEYS = [
    "",
    "/etc/passwd",
    "../outside.txt",
    "reports/../../outside.txt",
    "reports//a.csv",
    "./a.csv",
    "reports/",
    "a\\..\\b",
    "nul\x00.txt",
    ".tasklane-tmp-0123",
    "media/.tasklane-meta-a.png.json",
]


class StoreBehaviour:
    """Behaviour shared by every ArtifactStore; subclasses run it with a ``store`` fixture."""

    def test_put_returns_the_uri_that_get_reads(self, store: ArtifactStore) -> None:
        data = bytes(range(256)) * 3
        uri = store.put("reports/run-1.csv", data, content_type="text/csv")
        assert uri == store.uri("reports/run-1.csv")
        assert uri.endswith("/reports/run-1.csv")
        assert store.get(uri) == data

    def test_empty_artifact_round_trips(self, store: ArtifactStore) -> None:
        uri = store.put("empty.json", b"", content_type="application/json")
        assert store.exists(uri)
        assert store.get(uri) == b""

    def test_keys_with_spaces_unicode_and_uri_characters_round_trip(
        self, store: ArtifactStore
    ) -> None:
        key = "reports/crawl 1 #2? 100% – ü.html"
        uri = store.put(key, b"<html/>", content_type="text/html")
        assert store.get(uri) == b"<html/>"
        assert store.list("reports/") == [uri]

    def test_open_streams_and_closes(self, store: ArtifactStore) -> None:
        data = os.urandom(300_000)
        uri = store.put("media/clip.bin", data, content_type="application/octet-stream")
        with store.open(uri) as stream:
            chunks = list(iter(lambda: stream.read(65_536), b""))
        assert stream.closed
        assert b"".join(chunks) == data
        assert len(chunks) > 1

    def test_download_creates_parents_and_replaces_the_file(
        self, store: ArtifactStore, tmp_path: Path
    ) -> None:
        uri = store.put("a.png", b"\x89PNG new", content_type="image/png")
        target = tmp_path / "out" / "nested" / "a.png"
        store.download(uri, target)
        assert target.read_bytes() == b"\x89PNG new"
        target.write_bytes(b"stale and longer than the artifact")
        store.download(uri, target)
        assert target.read_bytes() == b"\x89PNG new"

    def test_exists_and_delete(self, store: ArtifactStore) -> None:
        uri = store.put("x/y.txt", b"y", content_type="text/plain")
        assert store.exists(uri)
        store.delete(uri)
        assert not store.exists(uri)
        assert store.list() == []
        store.delete(uri)  # deleting again is a no-op: a retried cleanup must not fail

    def test_list_filters_by_key_prefix_and_sorts(self, store: ArtifactStore) -> None:
        for key in ["reports/b.csv", "reports/a.csv", "reports-old/c.csv", "media/d.png"]:
            store.put(key, key.encode(), content_type="application/octet-stream")
        assert store.list("reports/") == [store.uri("reports/a.csv"), store.uri("reports/b.csv")]
        assert store.list("reports") == [
            store.uri("reports-old/c.csv"),
            store.uri("reports/a.csv"),
            store.uri("reports/b.csv"),
        ]
        assert store.list("reports/a") == [store.uri("reports/a.csv")]
        assert len(store.list()) == 4
        assert store.list("nothing/") == []

    def test_list_refuses_escaping_prefixes(self, store: ArtifactStore) -> None:
        with pytest.raises(ArtifactKeyError):
            store.list("../")

    def test_content_type_round_trips_and_follows_overwrites(self, store: ArtifactStore) -> None:
        uri = store.put("report", b"{}", content_type="application/json")
        assert store.content_type(uri) == "application/json"
        store.put("report", b"<p/>", content_type="text/html; charset=utf-8")
        assert store.content_type(uri) == "text/html; charset=utf-8"

    def test_put_file_round_trips_with_its_content_type(
        self, store: ArtifactStore, tmp_path: Path
    ) -> None:
        source = tmp_path / "video.mp4"
        source.write_bytes(os.urandom(1_000_003))
        uri = store.put_file("media/video.mp4", source, content_type="video/mp4")
        assert store.get(uri) == source.read_bytes()
        assert store.content_type(uri) == "video/mp4"

    def test_put_is_idempotent(self, store: ArtifactStore) -> None:
        first = store.put("idem/task-42.json", b'{"ok":1}', content_type="application/json")
        second = store.put("idem/task-42.json", b'{"ok":1}', content_type="application/json")
        assert first == second
        assert store.list("idem/") == [first]
        assert store.get(first) == b'{"ok":1}'

    def test_put_replaces_an_existing_artifact(self, store: ArtifactStore) -> None:
        uri = store.put("r.txt", b"a much longer first version", content_type="text/plain")
        store.put("r.txt", b"v2", content_type="text/plain")
        assert store.get(uri) == b"v2"

    def test_content_addressed_put(self, store: ArtifactStore) -> None:
        data = b"pixels"
        digest = hashlib.sha256(data).hexdigest()
        uri = store.put(content_key(data, ".png"), data, content_type="image/png")
        assert uri == store.uri(f"sha256/{digest[:2]}/{digest[2:]}.png")
        assert store.get(uri) == data

    @pytest.mark.parametrize("key", BAD_KEYS)
    def test_unsafe_keys_are_refused(self, store: ArtifactStore, key: str) -> None:
        with pytest.raises(ArtifactKeyError) as caught:
            store.put(key, b"x", content_type="text/plain")
        # A bad key is a programming error: permanent, and a ValueError for plain callers.
        assert isinstance(caught.value, PermanentError)
        assert isinstance(caught.value, ValueError)
        assert store.list() == []

    @pytest.mark.parametrize("uri", ["s3://another-bucket/a.txt", "file:///etc/passwd", "a.txt"])
    def test_uris_of_other_stores_are_refused(self, store: ArtifactStore, uri: str) -> None:
        with pytest.raises(ArtifactKeyError):
            store.get(uri)

    def test_missing_artifacts_raise_not_found_naming_the_uri(
        self, store: ArtifactStore, tmp_path: Path
    ) -> None:
        uri = store.uri("missing/report.csv")
        reads: list[Callable[[], object]] = [
            lambda: store.get(uri),
            lambda: store.open(uri),
            lambda: store.download(uri, tmp_path / "out.csv"),
            lambda: store.content_type(uri),
        ]
        for read in reads:
            with pytest.raises(ArtifactNotFoundError, match="missing/report.csv") as caught:
                read()
            assert caught.value.uri == uri
            assert isinstance(caught.value, PermanentError)
        assert not store.exists(uri)
        assert not (tmp_path / "out.csv").exists()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "artifacts"


@pytest.fixture
def store(root: Path) -> Iterator[ArtifactStore]:
    with open_store(root.as_uri()) as opened:
        yield opened


class TestLocalStoreBehaviour(StoreBehaviour):
    pass


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_artifacts_are_plain_files_under_the_root(store: ArtifactStore, root: Path) -> None:
    uri = store.put("reports/2024/run.csv", b"a,b\n", content_type="text/csv")
    assert uri == (root / "reports" / "2024" / "run.csv").as_uri()
    assert (root / "reports/2024/run.csv").read_bytes() == b"a,b\n"
    sidecar = root / "reports/2024/.tasklane-meta-run.csv.json"
    assert json.loads(sidecar.read_text()) == {"content_type": "text/csv"}
    assert _files(root) == ["reports/2024/.tasklane-meta-run.csv.json", "reports/2024/run.csv"]


def test_writes_leave_no_temporary_files(store: ArtifactStore, root: Path, tmp_path: Path) -> None:
    store.put("a.bin", b"1", content_type="application/octet-stream")
    store.put("a.bin", b"2", content_type="application/octet-stream")
    source = tmp_path / "source.bin"
    source.write_bytes(b"3" * 10_000)
    store.put_file("b/c.bin", source, content_type="application/octet-stream")
    store.download(store.uri("b/c.bin"), root / "d" / "copy.bin")
    assert not [name for name in _files(root) if ".tasklane-tmp-" in name]


def test_a_failed_write_keeps_the_old_artifact_and_no_temporary_file(
    store: ArtifactStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = store.put("report.json", b'{"v":1}', content_type="application/json")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.put("report.json", b'{"v":2}', content_type="text/plain")
    monkeypatch.undo()
    assert store.get(uri) == b'{"v":1}'
    assert store.content_type(uri) == "application/json"
    assert _files(root) == [".tasklane-meta-report.json.json", "report.json"]


def test_files_honour_the_umask(store: ArtifactStore, root: Path) -> None:
    umask = os.umask(0o022)
    try:
        store.put("shared.csv", b"x", content_type="text/csv")
    finally:
        os.umask(umask)
    # Other services (a web server publishing reports) must be able to read artifacts.
    assert (root / "shared.csv").stat().st_mode & 0o777 == 0o644


def test_a_file_without_sidecar_has_no_content_type_but_is_listed(
    store: ArtifactStore, root: Path
) -> None:
    (root / "dropped").mkdir(parents=True)
    (root / "dropped" / "by-hand.txt").write_bytes(b"hi")
    uri = store.uri("dropped/by-hand.txt")
    assert store.content_type(uri) is None
    assert store.get(uri) == b"hi"
    assert store.list() == [uri]


def test_uri_path_traversal_is_refused(store: ArtifactStore, root: Path) -> None:
    (root.parent / "secret.txt").write_bytes(b"secret")
    with pytest.raises(ArtifactKeyError):
        store.get(root.as_uri() + "/../secret.txt")


def test_a_directory_is_not_an_artifact(store: ArtifactStore) -> None:
    store.put("dir/a.txt", b"a", content_type="text/plain")
    uri = store.uri("dir")
    assert not store.exists(uri)
    with pytest.raises(ArtifactNotFoundError):
        store.get(uri)


def test_local_store_needs_an_absolute_root() -> None:
    with pytest.raises(ArtifactKeyError, match="absolute"):
        LocalStore("relative/dir")


def test_content_key_layout() -> None:
    data = b"frame-0001"
    digest = hashlib.sha256(data).hexdigest()
    key = content_key(data, ".jpg")
    assert key == f"sha256/{digest[:2]}/{digest[2:]}.jpg"
    assert content_key(digest, ".jpg") == key
    assert content_key(digest.upper(), "jpg") == key
    assert content_key(data) == f"sha256/{digest[:2]}/{digest[2:]}"


@pytest.mark.parametrize(
    ("value", "suffix"), [("not-a-digest", ".png"), ("ab" * 32, "/x.png"), ("ab" * 31, "")]
)
def test_content_key_rejects_bad_digests_and_suffixes(value: str, suffix: str) -> None:
    with pytest.raises(ArtifactKeyError):
        content_key(value, suffix)


def test_open_store_file_scheme(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/a/../store/")
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / "store"
    assert open_store(f"file://localhost{tmp_path}").uri("k") == (tmp_path / "k").as_uri()


def test_open_store_s3_scheme_builds_an_s3_store_without_network() -> None:
    from tasklane.artifacts.s3 import S3Store

    store = open_store(
        "s3://bucket/some/prefix/",
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",
    )
    with store:
        assert isinstance(store, S3Store)
        assert store.uri("a/b.png") == "s3://bucket/some/prefix/a/b.png"


@pytest.mark.parametrize(
    ("uri", "options", "message"),
    [
        ("gs://bucket/x", {}, "file://, s3://"),
        ("/plain/path", {}, "file://, s3://"),
        ("file:relative/dir", {}, "absolute"),
        ("file://otherhost/dir", {}, "absolute"),
        ("file:///dir?x=1", {}, "query"),
        ("file:///dir", {"endpoint_url": "http://x"}, "no options"),
        ("s3:///prefix", {}, "bucket"),
        ("s3://bucket/a/../b", {}, "'..'"),
        ("s3://bucket/p", {"no_such_option": 1}, "no_such_option"),
    ],
)
def test_open_store_rejects_bad_configuration(
    uri: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        open_store(uri, **options)
