"""media.video: probe, limits, frame grabs, thumbnails, contact sheets and transcodes.

Every video is generated here with PyAV (tests/unit/media/videos.py); nothing is downloaded.
Each frame's colour says when it is shown, so a test can check which frame it got.
"""

from __future__ import annotations

import io
import pickle
import random
import struct
from pathlib import Path

import av
import pytest
from PIL import Image

from media.video import (
    CorruptVideoError,
    ImageBytes,
    TranscodeStoppedError,
    UnsupportedVideoError,
    VideoLimits,
    VideoTooLargeError,
    VideoTooLongError,
    contact_sheet,
    frame_at,
    probe,
    thumbnail,
    transcode,
)
from tasklane.errors import PermanentError
from tests.unit.media.videos import make_audio, make_truncated, make_video, time_of

LIMITS = VideoLimits()
SECONDS = 4.0
JPEG = b"\xff\xd8\xff"


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="module")
def clip(media_dir: Path) -> Path:
    """4 s, 320x240, 25 fps, H.264 + AAC in MP4 (moov at the end, as PyAV writes it)."""
    return make_video(media_dir / "clip.mp4", seconds=SECONDS, width=320, height=240)


@pytest.fixture(scope="module")
def silent(media_dir: Path) -> Path:
    return make_video(media_dir / "silent.mp4", seconds=2, width=320, height=240, audio=False)


@pytest.fixture(scope="module")
def vga(media_dir: Path) -> Path:
    return make_video(media_dir / "vga.mp4", seconds=3, width=640, height=480)


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """An empty directory holding nothing but the transcode's target."""
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def jpeg_size(image: ImageBytes) -> tuple[int, int]:
    assert image.data.startswith(JPEG) and image.media_type == "image/jpeg"
    with Image.open(io.BytesIO(image.data)) as decoded:
        assert decoded.size == (image.width, image.height)
        return decoded.size


# --- probe -----------------------------------------------------------------------------------


def test_probe_reports_duration_codecs_size_and_fps(clip: Path) -> None:
    info = probe(clip, LIMITS)
    assert info.duration == pytest.approx(SECONDS, abs=0.2)
    assert (info.width, info.height) == (320, 240)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert info.fps == pytest.approx(25.0)
    assert info.bit_rate is not None and info.bit_rate > 0
    assert info.format_name == "mov,mp4,m4a,3gp,3g2,mj2"


def test_video_without_audio_has_no_audio_codec(silent: Path) -> None:
    info = probe(silent, LIMITS)
    assert (info.video_codec, info.audio_codec) == ("h264", None)
    assert info.duration == pytest.approx(2.0, abs=0.2)


@pytest.mark.parametrize(
    ("name", "codec", "format_name"),
    [
        ("clip.mkv", "libx264", "matroska,webm"),
        ("clip.ts", "libx264", "mpegts"),
        ("clip.webm", "libvpx", "matroska,webm"),
    ],
)
def test_other_accepted_containers(tmp_path: Path, name: str, codec: str, format_name: str) -> None:
    path = make_video(
        tmp_path / name, seconds=2, width=160, height=120, codec=codec, audio=codec == "libx264"
    )
    info = probe(path, LIMITS)
    assert (info.format_name, info.width, info.height) == (format_name, 160, 120)
    assert info.duration == pytest.approx(2.0, abs=0.2)
    assert time_of(frame_at(path, 1.0, LIMITS), 2.0) == pytest.approx(1.0, abs=0.1)


def test_codecs_are_named_not_their_decoders(tmp_path: Path) -> None:
    # FFmpeg decodes AV1 with libdav1d and MP3 with mp3float; the codecs are still av1 and mp3.
    path = make_video(
        tmp_path / "av1.mkv",
        seconds=1,
        width=160,
        height=128,
        codec="libsvtav1",
        audio_codec="libmp3lame",
    )
    info = probe(path, LIMITS)
    assert (info.video_codec, info.audio_codec) == ("av1", "mp3")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert transcode(path, out_dir / "out.mp4", height=64).audio_codec == "aac"


def test_duration_missing_from_the_container_is_measured(tmp_path: Path) -> None:
    # A live Matroska file has no duration in its header, like a browser's MediaRecorder output.
    path = make_video(
        tmp_path / "live.mkv",
        seconds=3,
        width=160,
        height=120,
        audio=False,
        container_options={"live": "1"},
    )
    with av.open(str(path)) as container:
        assert container.duration is None
    assert probe(path, LIMITS).duration == pytest.approx(3.0, abs=0.1)
    with pytest.raises(VideoTooLongError):
        probe(path, VideoLimits(max_duration=2.0))


# --- limits and bad input --------------------------------------------------------------------


def test_video_over_max_duration_is_too_long(clip: Path) -> None:
    with pytest.raises(VideoTooLongError, match=r"^video is 4\.0 s long, over max_duration=1\.5$"):
        probe(clip, VideoLimits(max_duration=1.5))
    with pytest.raises(VideoTooLongError):
        transcode(clip, clip.with_name("never.mp4"), height=120, limits=VideoLimits(max_duration=1))
    assert not clip.with_name("never.mp4").exists()


def test_file_over_max_bytes_is_too_large(clip: Path) -> None:
    size = clip.stat().st_size
    with pytest.raises(VideoTooLargeError, match=f"over max_bytes={size - 1}"):
        probe(clip, VideoLimits(max_bytes=size - 1))
    assert probe(clip, VideoLimits(max_bytes=size)).width == 320


def test_frames_over_max_pixels_are_too_large(clip: Path) -> None:
    with pytest.raises(VideoTooLargeError, match="320x240, over max_pixels=76799"):
        probe(clip, VideoLimits(max_pixels=320 * 240 - 1))
    with pytest.raises(VideoTooLargeError):
        thumbnail(clip, 1.0, limits=VideoLimits(max_pixels=320 * 240 - 1))
    assert probe(clip, VideoLimits(max_pixels=320 * 240)).height == 240


def test_truncated_file_is_corrupt(clip: Path, tmp_path: Path) -> None:
    truncated = make_truncated(clip, tmp_path / "truncated.mp4", 0.3)
    with pytest.raises(CorruptVideoError):
        probe(truncated, LIMITS)
    with pytest.raises(CorruptVideoError):
        thumbnail(truncated, 1.0)


def test_accepted_signature_with_garbage_after_it_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "garbage.mp4"
    box = struct.pack(">I4s4sI", 24, b"ftyp", b"isom", 512) + b"isomiso2"
    path.write_bytes(box + random.Random(1).randbytes(20_000))
    with pytest.raises(CorruptVideoError):
        probe(path, LIMITS)


def damage(source: Path, target: Path, spans: list[tuple[float, float]]) -> Path:
    """``source`` with the given shares of its bytes overwritten by noise."""
    data = bytearray(source.read_bytes())
    noise = random.Random(2)
    for start, end in spans:
        first, last = int(len(data) * start), int(len(data) * end)
        data[first:last] = noise.randbytes(last - first)
    target.write_bytes(bytes(data))
    return target


def undecodable_packets(path: Path) -> int:
    count = 0
    with av.open(str(path)) as container:
        for packet in container.demux():
            try:
                packet.decode()
            except av.error.InvalidDataError:
                count += 1
    return count


def test_a_few_damaged_packets_are_skipped(clip: Path, tmp_path: Path) -> None:
    damaged = damage(clip, tmp_path / "damaged.mp4", [(0.3, 0.3005), (0.6, 0.6005)])
    assert undecodable_packets(damaged) > 0
    assert thumbnail(damaged, 3.0).width == 320
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    info = transcode(damaged, out_dir / "out.mp4", height=120)
    assert info.duration == pytest.approx(SECONDS, abs=0.2)


def test_a_mostly_damaged_file_is_corrupt(clip: Path, tmp_path: Path) -> None:
    damaged = damage(clip, tmp_path / "damaged.mp4", [(0.02, 0.9)])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(CorruptVideoError):
        transcode(damaged, out_dir / "out.mp4", height=120)
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize(
    "content",
    [
        random.Random(0).randbytes(50_000),
        b"just some text, not a video\n" * 100,
        b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n",
        b"ffconcat version 1.0\nfile '/etc/passwd'\n",
        b"",
    ],
    ids=["random", "text", "hls-playlist", "concat-script", "empty"],
)
def test_input_that_is_not_an_accepted_container_is_unsupported(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "input.mp4"
    path.write_bytes(content)
    with pytest.raises(UnsupportedVideoError, match="not in an accepted video container"):
        probe(path, LIMITS)


def test_gif_and_wav_are_unsupported(tmp_path: Path) -> None:
    gif = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (32, 32), (i * 60, 0, 0)) for i in range(4)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    wav = make_audio(tmp_path / "tone.wav", seconds=1, codec="pcm_s16le")
    for path in (gif, wav):
        with pytest.raises(UnsupportedVideoError):
            probe(path, LIMITS)


def test_audio_only_file_in_an_accepted_container_has_no_video_stream(tmp_path: Path) -> None:
    path = make_audio(tmp_path / "tone.m4a", seconds=1)
    with pytest.raises(CorruptVideoError, match="has no video stream"):
        probe(path, LIMITS)


def test_codec_outside_the_accepted_set_is_unsupported(tmp_path: Path) -> None:
    path = make_video(
        tmp_path / "lossless.mkv", seconds=1, width=64, height=48, codec="ffv1", audio=False
    )
    with pytest.raises(UnsupportedVideoError, match="video codec 'ffv1' is not accepted"):
        probe(path, LIMITS)


def test_a_directory_is_not_a_video(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedVideoError, match="not a regular file"):
        probe(tmp_path, LIMITS)


def test_errors_are_permanent_and_pickle() -> None:
    for error_type in (
        VideoTooLargeError,
        VideoTooLongError,
        CorruptVideoError,
        UnsupportedVideoError,
        TranscodeStoppedError,
    ):
        error = error_type("the message")
        assert isinstance(error, PermanentError)
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is error_type and copy.args == ("the message",)


# --- frames, thumbnails, contact sheets ------------------------------------------------------


@pytest.mark.parametrize("offset", [0.0, 0.5, 1.3, 2.0, 3.2, 3.9])
def test_frame_at_returns_the_frame_shown_at_the_offset(clip: Path, offset: float) -> None:
    image = frame_at(clip, offset, LIMITS)
    assert (image.mode, image.size) == ("RGB", (320, 240))
    assert time_of(image, SECONDS) == pytest.approx(offset, abs=0.08)


def test_frames_at_different_offsets_differ(clip: Path) -> None:
    early, late = frame_at(clip, 0.5, LIMITS), frame_at(clip, 3.0, LIMITS)
    assert early.tobytes() != late.tobytes()


def test_offset_past_the_end_gives_the_last_frame(clip: Path) -> None:
    last = frame_at(clip, 3.96, LIMITS)
    assert frame_at(clip, 60.0, LIMITS).tobytes() == last.tobytes()
    assert time_of(last, SECONDS) == pytest.approx(SECONDS - 0.04, abs=0.08)


def test_frame_at_without_a_keyframe_before_the_offset_decodes_from_the_start(
    tmp_path: Path,
) -> None:
    # One keyframe in MPEG-TS, which has no index: the seek lands where nothing decodes.
    path = make_video(tmp_path / "one-gop.ts", seconds=3, width=160, height=120, gop_size=250)
    assert time_of(frame_at(path, 2.0, LIMITS), 3.0) == pytest.approx(2.0, abs=0.08)
    assert time_of(frame_at(path, 10.0, LIMITS), 3.0) == pytest.approx(2.96, abs=0.08)


def test_frame_at_applies_the_display_rotation(tmp_path: Path) -> None:
    path = make_video(
        tmp_path / "phone.mp4", seconds=1, width=320, height=240, audio=False, rotation=90
    )
    assert probe(path, LIMITS).width == 320  # the stored frames
    image = frame_at(path, 0.0, LIMITS)
    assert image.size == (240, 320)
    # Turned counter-clockwise: the white square at the stored top-left is now bottom-left.
    assert image.getpixel((20, 300)) == pytest.approx((255, 255, 255), abs=12)
    assert thumbnail(path, 0.0, max_width=120).height == 160


def test_frame_at_refuses_a_negative_offset(clip: Path) -> None:
    with pytest.raises(ValueError, match="offset"):
        frame_at(clip, -1.0, LIMITS)


def test_thumbnail_respects_max_width_and_aspect(clip: Path) -> None:
    still = thumbnail(clip, 2.0, max_width=160)
    assert jpeg_size(still) == (160, 120)
    with Image.open(io.BytesIO(still.data)) as decoded:
        assert time_of(decoded, SECONDS) == pytest.approx(2.0, abs=0.1)


def test_thumbnail_is_never_upscaled(clip: Path) -> None:
    assert jpeg_size(thumbnail(clip, 1.0, max_width=1000)) == (320, 240)


def test_thumbnail_quality_changes_the_size(vga: Path) -> None:
    small = thumbnail(vga, 1.0, quality=20)
    large = thumbnail(vga, 1.0, quality=95)
    assert len(small.data) < len(large.data)
    with pytest.raises(ValueError, match="quality"):
        thumbnail(vga, 1.0, quality=0)


def test_contact_sheet_tiles_frames_spread_over_the_video(clip: Path) -> None:
    sheet = contact_sheet(clip, columns=3, rows=2, tile_width=100)
    assert jpeg_size(sheet) == (300, 150)  # 3 x 100 by 2 x 75
    with Image.open(io.BytesIO(sheet.data)) as decoded:
        times = [
            time_of(decoded.crop((c * 100, r * 75, c * 100 + 100, r * 75 + 75)), SECONDS)
            for r in range(2)
            for c in range(3)
        ]
    # The centre of each sixth of 4 s: 0.33, 1.0, 1.67, 2.33, 3.0, 3.67.
    assert times == pytest.approx([(i + 0.5) * SECONDS / 6 for i in range(6)], abs=0.12)


def test_contact_sheet_defaults(vga: Path) -> None:
    assert jpeg_size(contact_sheet(vga)) == (4 * 320, 4 * 240)


# --- transcode -------------------------------------------------------------------------------


def test_transcode_scales_to_the_target_height(vga: Path, out_dir: Path) -> None:
    target = out_dir / "out.mp4"
    info = transcode(vga, target, height=240, video_bit_rate=500_000, audio_bit_rate=64_000)
    assert (info.width, info.height) == (320, 240)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert info.format_name.startswith("mov,mp4")
    assert info.duration == pytest.approx(3.0, abs=0.2)
    assert info.fps == pytest.approx(25.0)
    assert [p.name for p in out_dir.iterdir()] == ["out.mp4"]
    data = target.read_bytes()
    assert data[4:8] == b"ftyp" and data.find(b"moov") < data.find(b"mdat")  # faststart
    assert time_of(frame_at(target, 1.5, LIMITS), 3.0) == pytest.approx(1.5, abs=0.1)


def test_transcode_never_upscales(clip: Path, out_dir: Path) -> None:
    info = transcode(clip, out_dir / "out.mp4", height=1080)
    assert (info.width, info.height) == (320, 240)


def test_transcode_rounds_the_width_to_an_even_number(tmp_path: Path, out_dir: Path) -> None:
    source = make_video(tmp_path / "wide.mp4", seconds=1, width=330, height=240, audio=False)
    info = transcode(source, out_dir / "out.mp4", height=120)  # 330 * 120 / 240 = 165
    assert (info.width, info.height) == (166, 120)
    assert info.audio_codec is None


def test_transcode_keeps_the_display_rotation(tmp_path: Path, out_dir: Path) -> None:
    source = make_video(
        tmp_path / "phone.mp4", seconds=1, width=320, height=240, audio=False, rotation=90
    )
    target = out_dir / "out.mp4"
    assert (transcode(source, target, height=120).width, frame_at(target, 0, LIMITS).size) == (
        160,
        (120, 160),
    )


def test_should_stop_stops_the_transcode_and_leaves_no_file(clip: Path, out_dir: Path) -> None:
    calls = 0

    def should_stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 10

    with pytest.raises(TranscodeStoppedError):
        transcode(clip, out_dir / "out.mp4", height=120, should_stop=should_stop)
    assert calls == 11
    assert list(out_dir.iterdir()) == []


class SimulatedSoftTimeLimit(BaseException):
    """Like Celery's SoftTimeLimitExceeded, raised asynchronously in the middle of the loop."""


def test_a_base_exception_mid_transcode_removes_the_temporary_file(
    clip: Path, out_dir: Path
) -> None:
    target = out_dir / "out.mp4"
    target.write_bytes(b"previous output")
    seen: list[Path] = []

    def interrupt() -> bool:
        seen.extend(out_dir.iterdir())
        if len(seen) > 40:
            raise SimulatedSoftTimeLimit
        return False

    with pytest.raises(SimulatedSoftTimeLimit):
        transcode(clip, target, height=120, should_stop=interrupt)
    assert any(path.name.endswith(".part.mp4") for path in seen)  # it was writing a temp file
    assert list(out_dir.iterdir()) == [target]
    assert target.read_bytes() == b"previous output"  # replaced only on success


def test_transcode_of_a_truncated_file_is_corrupt(clip: Path, tmp_path: Path) -> None:
    truncated = make_truncated(clip, tmp_path / "truncated.mp4", 0.3)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(CorruptVideoError):
        transcode(truncated, out_dir / "out.mp4", height=120)
    assert list(out_dir.iterdir()) == []


def test_transcode_arguments_are_validated(clip: Path, out_dir: Path) -> None:
    with pytest.raises(ValueError, match="height"):
        transcode(clip, out_dir / "out.mp4", height=0)
    assert list(out_dir.iterdir()) == []
