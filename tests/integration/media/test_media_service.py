"""A real media worker: images and videos from the artifact store or a local site, and every limit.

The media behaviour does not depend on the broker, so these tests share one worker on Redis (the
notifier and scraper suites cover both brokers); each test looks only at its own tasks.
"""

from __future__ import annotations

import io
import struct
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Producer
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tasklane.artifacts import ArtifactStore, open_store
from tasklane.errors import TaskFailedError
from tasklane.publish import Publisher, TaskHandle
from tasklane.wire.deadletter import DeadLetter
from tasklane.wire.protocol import CONTENT_ENCODING, CONTENT_TYPE, task_message
from tasklane.wire.routing import queue_name
from tasklane_dev.sinks import Reply, SiteServer, free_port
from tests.support import eventually
from tests.support.harness import BrokerEnv, WorkerProcess, cleanup, dead_letters
from tests.unit.media.videos import make_video

MAX_IMAGE_BYTES = 400_000
MAX_IMAGE_PIXELS = 4_000_000
MAX_VIDEO_SECONDS = 5


class Media:
    """The module's worker, store, publisher and test files."""

    def __init__(
        self, broker: BrokerEnv, root: Path, worker: WorkerProcess, metrics_port: int
    ) -> None:
        self.broker = broker
        self.metrics_port = metrics_port
        self.root = root
        self.worker = worker
        self.store: ArtifactStore = open_store((root / "artifacts").as_uri())
        self.publisher = Publisher(broker.settings)

    def put(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        return self.store.put(f"inputs/{uuid.uuid4().hex}/{name}", data, content_type=content_type)

    def dead_letter(self, handle: TaskHandle[Any], queue: str, timeout: float = 30) -> DeadLetter:
        return eventually(
            lambda: next(
                (x for x in dead_letters(self.broker, queue) if x.task_id == handle.id), None
            ),
            timeout=timeout,
            interval=0.2,
            message=f"a dead letter for {handle.id} in {queue}",
        )


@pytest.fixture(scope="module")
def media(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Media]:
    root = tmp_path_factory.mktemp("media")
    (root / "work").mkdir()
    broker = BrokerEnv("redis", redis_url, redis_url, f"t{uuid.uuid4().hex[:10]}.")
    metrics_port = free_port()
    env = {
        "TASKLANE_METRICS_PORT": str(metrics_port),
        **broker.env(),
        "TASKLANE_ARTIFACTS_URL": (root / "artifacts").as_uri(),
        "TASKLANE_MEDIA_ALLOW": "127.0.0.1/32",
        "TASKLANE_MEDIA_WORK_DIR": str(root / "work"),
        "TASKLANE_MEDIA_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
        "TASKLANE_MEDIA_MAX_IMAGE_PIXELS": str(MAX_IMAGE_PIXELS),
        "TASKLANE_MEDIA_MAX_VIDEO_SECONDS": str(MAX_VIDEO_SECONDS),
    }
    worker = WorkerProcess("media", env, root / "media.log", concurrency=2)
    worker.wait_ready()
    served = Media(broker, root, worker, metrics_port)
    yield served
    served.publisher.close()
    worker.stop()
    cleanup(broker)


def jpeg(width: int, height: int, orientation: int = 1, quality: int = 90) -> bytes:
    """A JPEG whose left half is red and right half blue, with an EXIF orientation."""
    image = Image.new("RGB", (width, height), (220, 20, 20))
    image.paste((20, 20, 220), (width // 2, 0, width, height))
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "TestCam"  # Make: must not survive strip_metadata
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, exif=exif)
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but that holds almost nothing."""
    out = io.BytesIO()
    Image.new("RGB", (1, 1)).save(out, "PNG")
    data = bytearray(out.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_transform_orients_resizes_strips_and_converts(media: Media) -> None:
    source = media.put("photo.jpg", jpeg(400, 200, orientation=6))  # stored sideways
    result = media.publisher.publish(
        "media.image.transform",
        {"source": source, "resize": {"width": 100, "height": 100}, "format": "webp"},
    ).get(timeout=30)
    assert (result.width, result.height, result.format) == (50, 100, "webp")
    data = media.store.get(result.output_uri)
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP" and result.bytes == len(data)
    image = Image.open(io.BytesIO(data))
    assert image.size == (50, 100)
    assert not image.getexif()  # orientation applied, metadata gone
    red_top = image.convert("RGB").getpixel((25, 10))
    assert isinstance(red_top, tuple) and red_top[0] > 150 > red_top[2]  # upright: red on top


def test_thumbnails_come_from_one_task_and_a_repeat_writes_no_new_output(media: Media) -> None:
    source = media.put("big.jpg", jpeg(1600, 1200))
    payload = {
        "source": source,
        "sizes": [{"width": 800, "height": 800}, {"width": 64, "height": 64}],
    }
    first = media.publisher.publish("media.image.thumbnail", payload).get(timeout=30)
    assert [(t.width, t.height) for t in first.thumbnails] == [(800, 600), (64, 48)]
    before = set(media.store.list("media/"))
    again = media.publisher.publish("media.image.thumbnail", payload).get(timeout=30)
    assert [t.output_uri for t in again.thumbnails] == [t.output_uri for t in first.thumbnails]
    assert set(media.store.list("media/")) == before


def test_an_idempotency_key_answers_a_repeat_without_work(media: Media) -> None:
    source = media.put("key.jpg", jpeg(300, 300))
    payload = {"source": source, "resize": {"width": 30}, "idempotency_key": uuid.uuid4().hex}
    first = media.publisher.publish("media.image.transform", payload).get(timeout=30)
    media.store.delete(first.output_uri)  # a second run would write it again
    second = media.publisher.publish("media.image.transform", payload).get(timeout=30)
    assert second.deduplicated and second.output_uri == first.output_uri
    assert not media.store.exists(first.output_uri)


def test_remote_sources_come_through_the_ssrf_guard(media: Media) -> None:
    pages = {
        "/cat.jpg": Reply(body=jpeg(120, 80), headers={"Content-Type": "image/jpeg"}),
        "/elsewhere": Reply(status=302, headers={"Location": "http://127.0.0.2:1/cat.jpg"}),
    }
    with SiteServer(pages) as site:
        good = media.publisher.publish(
            "media.image.transform", {"source": f"{site.url}/cat.jpg", "format": "png"}
        ).get(timeout=30)
        refused = media.publisher.publish(
            "media.image.transform", {"source": f"{site.url}/elsewhere"}
        )
        with pytest.raises(TaskFailedError, match="127.0.0.2"):
            refused.get(timeout=30)
    assert (good.width, good.height, good.format) == (120, 80, "png")
    letter = media.dead_letter(refused, "media.image")
    assert letter.reason == "permanent-error" and letter.attempts == 1


@pytest.mark.parametrize(
    ("name", "data", "error"),
    [
        ("bomb.png", png_claiming(30_000, 30_000), "ImageTooLargeError"),
        ("truncated.jpg", jpeg(800, 600)[:3000], "CorruptImageError"),
        ("notes.txt", b"these are not pixels\n" * 10, "UnsupportedImageError"),
        ("huge.bmp", b"BM" + b"\0" * (MAX_IMAGE_BYTES + 10), "SourceTooLargeError"),
    ],
)
def test_image_limits_dead_letter_without_retry_and_the_worker_goes_on(
    media: Media, name: str, data: bytes, error: str
) -> None:
    source = media.put(name, data)
    handle = media.publisher.publish("media.image.transform", {"source": source})
    with pytest.raises(TaskFailedError, match=error):
        handle.get(timeout=30)
    letter = media.dead_letter(handle, "media.image")
    assert (letter.reason, letter.error_type, letter.attempts) == ("permanent-error", error, 1)
    fine = media.put("fine.jpg", jpeg(64, 64))
    assert media.publisher.publish("media.image.transform", {"source": fine}).get(30).width == 64
    assert media.worker.process.poll() is None


@pytest.fixture(scope="module")
def clip(media: Media, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = make_video(
        tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=3, width=320, height=240
    )
    return media.put("clip.mp4", path.read_bytes(), "video/mp4")


def test_video_probe_thumbnail_and_contact_sheet(media: Media, clip: str) -> None:
    info = media.publisher.publish("media.video.probe", {"source": clip}).get(timeout=60)
    assert info.duration == pytest.approx(3.0, abs=0.2)
    assert (info.width, info.height, info.video_codec, info.audio_codec) == (
        320,
        240,
        "h264",
        "aac",
    )
    still = media.publisher.publish(
        "media.video.thumbnail", {"source": clip, "offset": 1.5, "max_width": 160}
    ).get(timeout=60)
    assert (still.width, still.height) == (160, 120)
    assert media.store.get(still.output_uri)[:3] == b"\xff\xd8\xff"
    sheet = media.publisher.publish(
        "media.video.thumbnail",
        {"source": clip, "contact_sheet": {"columns": 3, "rows": 2, "tile_width": 100}},
    ).get(timeout=60)
    assert (sheet.width, sheet.height) == (300, 150)


def test_transcode_writes_h264_aac_mp4_at_the_target_height(media: Media, clip: str) -> None:
    result = media.publisher.publish(
        "media.video.transcode", {"source": clip, "height": 120, "video_bit_rate": 300_000}
    ).get(timeout=120)
    assert (result.width, result.height) == (160, 120)
    assert (result.video_codec, result.audio_codec) == ("h264", "aac")
    assert result.duration == pytest.approx(3.0, abs=0.25)
    data = media.store.get(result.output_uri)
    assert data[4:8] == b"ftyp" and len(data) == result.bytes


def test_video_over_the_duration_limit_is_refused(media: Media, tmp_path: Path) -> None:
    path = make_video(tmp_path / "long.mp4", seconds=MAX_VIDEO_SECONDS + 2, width=160, height=120)
    source = media.put("long.mp4", path.read_bytes(), "video/mp4")
    handle = media.publisher.publish("media.video.probe", {"source": source})
    with pytest.raises(TaskFailedError, match="max_duration"):
        handle.get(timeout=60)
    letter = media.dead_letter(handle, "media.video")
    assert (letter.reason, letter.error_type) == ("permanent-error", "VideoTooLongError")


def test_transcode_stopped_by_its_soft_time_limit_leaves_no_files(
    media: Media, tmp_path: Path
) -> None:
    # 225 frames of 720p: a few seconds of encoding, far beyond the 0.2 s limit even on a fast
    # machine, so the limit, not the end of the file, stops the encoder.
    path = make_video(tmp_path / "slow.mp4", seconds=4.5, width=1280, height=720, fps=50)
    source = media.put("slow.mp4", path.read_bytes(), "video/mp4")
    task_id = str(uuid.uuid4())
    message = task_message("media.video.transcode", task_id, {"source": source, "height": 720})
    # This call's own limits, in Celery's order: hard 30 s, soft 0.2 s.
    message.headers["timelimit"] = [30, 0.2]
    contract = media.publisher.contract("media.video.transcode")
    outputs = set(media.store.list("media/transcode/"))
    with Connection(media.broker.broker_url) as conn:
        Producer(conn.default_channel).publish(
            message.body,
            exchange="",
            routing_key=queue_name(contract, media.broker.namespace),
            headers=message.headers,
            content_type=CONTENT_TYPE,
            content_encoding=CONTENT_ENCODING,
            delivery_mode=2,
            **message.properties,
        )
    handle = media.publisher.handle(contract, task_id)
    with pytest.raises(TaskFailedError, match="SoftTimeLimitExceeded"):
        handle.get(timeout=60)
    letter = media.dead_letter(handle, "media.video")
    assert letter.reason == "time-limit"
    assert list((media.root / "work").iterdir()) == []  # the encoder stopped, its files removed
    assert set(media.store.list("media/transcode/")) == outputs
    assert media.worker.process.poll() is None


@pytest.mark.parametrize(
    ("name", "cut", "error"),
    [("truncated.mp4", 0.3, "CorruptVideoError"), ("notes.mp4", 0.0, "UnsupportedVideoError")],
)
def test_broken_videos_dead_letter_without_retry(
    media: Media, clip: str, name: str, cut: float, error: str
) -> None:
    whole = media.store.get(clip)
    data = whole[: int(len(whole) * cut)] if cut else b"not a video at all\n" * 50
    handle = media.publisher.publish("media.video.probe", {"source": media.put(name, data)})
    with pytest.raises(TaskFailedError, match=error):
        handle.get(timeout=60)
    letter = media.dead_letter(handle, "media.video")
    assert (letter.reason, letter.error_type, letter.attempts) == ("permanent-error", error, 1)


def media_metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def test_media_metrics_count_items_bytes_and_limits(media: Media) -> None:
    task = "media.image.transform"
    ok = ("tasklane_media_items_total", (("outcome", "ok"), ("task", task)))
    refused = ("tasklane_media_items_total", (("outcome", "refused"), ("task", task)))
    bomb = ("tasklane_media_limits_total", (("limit", "ImageTooLargeError"),))
    read = ("tasklane_media_bytes_total", (("direction", "in"),))
    written = ("tasklane_media_bytes_total", (("direction", "out"),))
    before = media_metrics(media.metrics_port)
    good = media.put("good.jpg", jpeg(200, 100))
    out = media.publisher.publish(task, {"source": good, "format": "png"}).get(timeout=30)
    bad = media.publisher.publish(task, {"source": media.put("b.png", png_claiming(9000, 9000))})
    with pytest.raises(TaskFailedError):
        bad.get(timeout=30)
    after = media_metrics(media.metrics_port)
    assert after[ok] - before.get(ok, 0) == 1
    assert after[refused] - before.get(refused, 0) == 1
    assert after[bomb] - before.get(bomb, 0) == 1
    assert after[written] - before.get(written, 0) == out.bytes
    assert after[read] - before.get(read, 0) >= len(jpeg(200, 100))
