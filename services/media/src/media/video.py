"""Video probe, frame grabs, thumbnails, contact sheets and H.264 transcodes with hard limits.

Plain domain code: no Celery, no network. It reads and writes local paths through PyAV (FFmpeg's
libraries inside the wheel), and FFmpeg only ever sees files that look like an accepted container.
Design: docs/media.md#video-input.
"""

from __future__ import annotations

import io
import math
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import av.error
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.packet import Packet
from av.stream import Disposition, Stream
from av.video.frame import VideoFrame
from av.video.stream import VideoStream
from PIL import Image

from tasklane.errors import PermanentError

__all__ = [
    "ACCEPTED_AUDIO_CODECS",
    "ACCEPTED_CONTAINERS",
    "ACCEPTED_VIDEO_CODECS",
    "CorruptVideoError",
    "ImageBytes",
    "TranscodeStoppedError",
    "UnsupportedVideoError",
    "VideoInfo",
    "VideoLimits",
    "VideoTooLargeError",
    "VideoTooLongError",
    "contact_sheet",
    "frame_at",
    "probe",
    "thumbnail",
    "transcode",
]

# Components of FFmpeg demuxer names ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", ...).
ACCEPTED_CONTAINERS = frozenset(
    {"mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "mpegts", "ogg"}
)
ACCEPTED_VIDEO_CODECS = frozenset(
    {
        "h264",
        "hevc",
        "vp8",
        "vp9",
        "av1",
        "mpeg4",
        "mpeg1video",
        "mpeg2video",
        "h263",
        "mjpeg",
        "theora",
        "prores",
    }
)
ACCEPTED_AUDIO_CODECS = frozenset(
    {
        "aac",
        "mp3",
        "mp2",
        "opus",
        "vorbis",
        "flac",
        "ac3",
        "eac3",
        "alac",
        "pcm_s16le",
        "pcm_s16be",
        "pcm_s24le",
        "pcm_s32le",
        "pcm_f32le",
        "pcm_u8",
        "pcm_mulaw",
        "pcm_alaw",
    }
)

_SNIFF_BYTES = 1024
_ISO_BMFF_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"})
_MAGIC_PREFIXES = (b"\x1a\x45\xdf\xa3", b"OggS")  # EBML (Matroska, WebM), Ogg
_AVI_FORMS = frozenset({b"AVI ", b"AVIX", b"AVI\x19"})
# (packet size, offset of the first sync byte): plain TS, M2TS (4-byte prefix), TS with FEC.
_TS_LAYOUTS = ((188, 0), (192, 4), (204, 0))
_TS_SYNC = 0x47
_AV_TIME_BASE = 1_000_000
_DEFAULT_FPS = Fraction(25)
_AAC_FRAME_SIZE = 1024
# Damaged packets skipped before a file counts as corrupt (see _frames).
_MAX_DAMAGED_PACKETS = 50
_JPEG_MAX_SIDE = 65_500
_TRANSPOSE = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}


class VideoTooLargeError(PermanentError):
    """The file is over ``max_bytes`` or its frames are over ``max_pixels``."""


class VideoTooLongError(PermanentError):
    """The video is longer than ``max_duration``."""


class CorruptVideoError(PermanentError):
    """An accepted container that cannot be demuxed or decoded, or has no video stream."""


class UnsupportedVideoError(PermanentError):
    """Not an accepted container or codec (including input that is not media at all)."""


class TranscodeStoppedError(PermanentError):
    """``should_stop()`` asked a transcode to stop; nothing was written to the target."""


@dataclass(frozen=True)
class VideoLimits:
    """Hard limits checked before any decoding work is spent on a file."""

    max_bytes: int = 2 * 1024**3
    max_duration: float = 3 * 3600.0
    max_pixels: int = 3840 * 2160


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learnt; ``width``/``height`` are those of the stored frames."""

    duration: float
    width: int
    height: int
    video_codec: str
    audio_codec: str | None
    fps: float | None
    bit_rate: int | None
    format_name: str


@dataclass(frozen=True)
class ImageBytes:
    """An encoded image, ready to store or send."""

    data: bytes
    width: int
    height: int
    media_type: str = "image/jpeg"


@dataclass(frozen=True)
class _Source:
    """An opened, checked input: its selected streams and what probing found."""

    container: InputContainer
    video: VideoStream
    audio: AudioStream | None
    info: VideoInfo


# --- public API ------------------------------------------------------------------------------


def probe(path: Path, limits: VideoLimits) -> VideoInfo:
    """Check ``path`` against ``limits`` and describe it; the first video frame must decode."""
    with _open_source(path, limits) as source:
        _first_frame(source)
        return source.info


def frame_at(path: Path, offset: float, limits: VideoLimits) -> Image.Image:
    """The RGB frame shown at ``offset`` seconds (the last frame when past the end)."""
    _check_offset(offset)
    with _open_source(path, limits) as source:
        frame = _frame_near(source, offset)
        return _render(frame, source.video, _display_size(frame, source.video))


def thumbnail(
    path: Path,
    offset: float,
    *,
    max_width: int = 640,
    quality: int = 85,
    limits: VideoLimits = VideoLimits(),
) -> ImageBytes:
    """A JPEG of the frame at ``offset``, no wider than ``max_width`` (never upscaled)."""
    _check_offset(offset)
    _check_positive(max_width=max_width)
    _check_quality(quality)
    with _open_source(path, limits) as source:
        frame = _frame_near(source, offset)
        width, height = _display_size(frame, source.video)
        if width > max_width:
            width, height = max_width, max(1, round(height * max_width / width))
        return _jpeg(_render(frame, source.video, (width, height)), quality)


def contact_sheet(
    path: Path,
    *,
    columns: int = 4,
    rows: int = 4,
    tile_width: int = 320,
    quality: int = 85,
    limits: VideoLimits = VideoLimits(),
) -> ImageBytes:
    """``columns * rows`` frames, one at the centre of each equal slice of the video, tiled.

    Tiles are ``tile_width`` wide and as high as the first frame's aspect ratio says, so the
    sheet is ``columns * tile_width`` by ``rows * tile_height``.
    """
    _check_positive(columns=columns, rows=rows, tile_width=tile_width)
    _check_quality(quality)
    count = columns * rows
    with _open_source(path, limits) as source:
        step = source.info.duration / count
        tiles: list[Image.Image] = []
        size: tuple[int, int] | None = None
        for index in range(count):
            frame = _frame_near(source, (index + 0.5) * step)
            size = size or _tile_size(frame, source.video, tile_width, columns, rows)
            tiles.append(_render(frame, source.video, size))
    assert size is not None  # count >= 1
    sheet = Image.new("RGB", (columns * size[0], rows * size[1]))
    for index, tile in enumerate(tiles):
        sheet.paste(tile, ((index % columns) * size[0], (index // columns) * size[1]))
    return _jpeg(sheet, quality)


def transcode(
    source: Path,
    target: Path,
    *,
    height: int,
    video_bit_rate: int = 2_000_000,
    audio_bit_rate: int = 128_000,
    limits: VideoLimits = VideoLimits(),
    should_stop: Callable[[], bool] = lambda: False,
) -> VideoInfo:
    """Transcode to H.264/AAC MP4 (faststart) at ``height`` (never upscaled), atomically.

    The output is written to a temporary file next to ``target`` and renamed onto it only on
    success. On any exception, including BaseExceptions raised asynchronously (Celery's
    SoftTimeLimitExceeded, KeyboardInterrupt), the containers are closed and the temporary file
    removed before it propagates. ``should_stop`` is checked once per decoded frame.
    """
    _check_positive(height=height, video_bit_rate=video_bit_rate, audio_bit_rate=audio_bit_rate)
    rotation = _probe_rotation(source, limits)
    temporary = target.parent / f".{target.name}.{uuid.uuid4().hex}.part.mp4"
    try:
        with _open_source(source, limits) as opened:
            settings = _EncodeSettings(height, video_bit_rate, audio_bit_rate, rotation)
            _transcode_into(opened, temporary, settings, limits, should_stop)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return probe(target, limits)


# --- opening and checking --------------------------------------------------------------------


@contextmanager
def _open_source(path: Path, limits: VideoLimits) -> Iterator[_Source]:
    """Size, signature, demuxer, streams, codecs and limits checked, in that order."""
    _check_file(path, limits)
    container = _open_container(path, limits)
    try:
        yield _inspect(container, path, limits)
    finally:
        container.close()


def _check_file(path: Path, limits: VideoLimits) -> None:
    """Cheap checks first: nothing is parsed unless the size and signature are acceptable."""
    status = path.stat()
    if not stat.S_ISREG(status.st_mode):
        raise UnsupportedVideoError(f"{path.name} is not a regular file")
    if status.st_size > limits.max_bytes:
        raise VideoTooLargeError(
            f"video is {status.st_size} bytes, over max_bytes={limits.max_bytes}"
        )
    with path.open("rb") as file:
        head = file.read(_SNIFF_BYTES)
    if not _looks_accepted(head):
        raise UnsupportedVideoError(f"{path.name} is not in an accepted video container")


def _looks_accepted(head: bytes) -> bool:
    """Whether ``head`` starts like one of the accepted containers."""
    return (
        head[4:8] in _ISO_BMFF_BOXES
        or head.startswith(_MAGIC_PREFIXES)
        or (head.startswith(b"RIFF") and head[8:12] in _AVI_FORMS)
        or any(_ts_synced(head, size, first) for size, first in _TS_LAYOUTS)
    )


def _ts_synced(head: bytes, size: int, first: int) -> bool:
    """At least two MPEG-TS packets in ``head``, each starting with the sync byte."""
    positions = range(first, len(head), size)
    return len(positions) >= 2 and all(head[i] == _TS_SYNC for i in positions[:3])


def _open_container(path: Path, limits: VideoLimits) -> InputContainer:
    """Open with only the accepted demuxers and the file protocol; map failures."""
    try:
        return av.open(
            str(path),
            "r",
            format=None,
            metadata_errors="replace",  # tags are not worth failing for
            # format_whitelist is checked right after probing, before the demuxer reads anything.
            container_options={
                "format_whitelist": ",".join(sorted(ACCEPTED_CONTAINERS)),
                "protocol_whitelist": "file",
            },
            # Reaches the decoders avformat_find_stream_info opens while probing.
            options={"max_pixels": str(limits.max_pixels)},
        )
    except av.error.FFmpegError as exc:
        # Including EINVAL for a demuxer off the whitelist: the file starts like an accepted
        # container, so not being one is damage, as much as a header that does not parse.
        raise _media_error(exc, path, "cannot be opened as an accepted container") from exc


def _inspect(container: InputContainer, path: Path, limits: VideoLimits) -> _Source:
    """Select the streams and enforce the format, codec, pixel and duration limits."""
    format_name = container.format.name
    if not ACCEPTED_CONTAINERS.intersection(format_name.split(",")):
        raise UnsupportedVideoError(f"container {format_name!r} is not accepted")
    video = _video_stream(container, path)
    video_codec = _codec_name(video, ACCEPTED_VIDEO_CODECS, "video")
    width, height = video.codec_context.width, video.codec_context.height
    if width <= 0 or height <= 0:
        raise CorruptVideoError(f"{path.name} has no frame size")
    if width * height > limits.max_pixels:
        raise VideoTooLargeError(f"video is {width}x{height}, over max_pixels={limits.max_pixels}")
    # Frames whose size changes mid-stream are refused by the decoder itself.
    video.codec_context.options = {"max_pixels": str(limits.max_pixels)}
    audio = container.streams.audio[0] if container.streams.audio else None
    audio_codec = _codec_name(audio, ACCEPTED_AUDIO_CODECS, "audio") if audio else None
    rate = video.average_rate or video.guessed_rate
    info = VideoInfo(
        duration=_duration(container, video, limits),
        width=width,
        height=height,
        video_codec=video_codec,
        audio_codec=audio_codec,
        fps=float(rate) if rate else None,
        bit_rate=container.bit_rate or None,
        format_name=format_name,
    )
    return _Source(container, video, audio, info)


def _video_stream(container: InputContainer, path: Path) -> VideoStream:
    """The first real video stream: cover art (an attached picture) is not video."""
    for stream in container.streams.video:
        if not stream.disposition & Disposition.attached_pic:
            return stream
    raise CorruptVideoError(f"{path.name} has no video stream")


def _codec_name(stream: VideoStream | AudioStream, accepted: frozenset[str], kind: str) -> str:
    """The stream's codec ("av1", "mp3"; not the decoder's "libdav1d", "mp3float"), which must
    be accepted and have a decoder."""
    # PyAV leaves codec_context None when FFmpeg has no decoder; the stubs do not say so.
    context = cast("object | None", stream.codec_context)
    name = stream.codec_context.codec.canonical_name if context is not None else "(no decoder)"
    if name not in accepted:
        raise UnsupportedVideoError(f"{kind} codec {name!r} is not accepted")
    return name


def _duration(container: InputContainer, video: VideoStream, limits: VideoLimits) -> float:
    """Container duration, else the stream's, else measured; over ``max_duration`` raises."""
    if container.duration and container.duration > 0:
        duration = container.duration / _AV_TIME_BASE
    elif video.duration and video.time_base:
        duration = float(video.duration * video.time_base)
    else:
        duration = _measure_duration(container, video, limits)
    _check_duration(duration, limits)
    return duration


def _measure_duration(container: InputContainer, video: VideoStream, limits: VideoLimits) -> float:
    """Demux (no decoding) to the last video packet; stops early once over the limit."""
    time_base = video.time_base or Fraction(1, _AV_TIME_BASE)
    start = video.start_time or 0
    end = 0.0
    for packet in _packets(container, (video,)):
        if packet.pts is not None:
            end = max(end, float((packet.pts + (packet.duration or 0) - start) * time_base))
            _check_duration(end, limits)
    try:
        container.seek(0)  # back to the start, in AV_TIME_BASE units
    except av.error.FFmpegError as exc:
        raise _media_error(exc, Path(container.name), "cannot be seeked") from exc
    return end


def _check_duration(duration: float, limits: VideoLimits) -> None:
    if duration > limits.max_duration:
        raise VideoTooLongError(
            f"video is {duration:.1f} s long, over max_duration={limits.max_duration}"
        )


def _media_error(exc: Exception, path: Path, what: str) -> CorruptVideoError:
    """FFmpeg's error reading a local file we already opened: the data is at fault.

    Even errno-like codes (EPERM from a seek, ENOMEM for a size claimed by a damaged header)
    come from the content here, not from the file system.
    """
    detail = exc.strerror if isinstance(exc, av.error.FFmpegError) else None
    return CorruptVideoError(f"{path.name} {what}: {detail or exc}")


# --- decoding frames -------------------------------------------------------------------------


def _decoded(source: _Source) -> Iterator[VideoFrame]:
    """Decoded video frames from the current position."""
    for frame in _frames(source, (source.video,)):
        if isinstance(frame, VideoFrame):
            yield frame


def _frames(
    source: _Source, streams: tuple[VideoStream | AudioStream, ...]
) -> Iterator[VideoFrame | AudioFrame]:
    """Frames of ``streams`` in demux order, the decoders flushed at the end.

    A packet that does not decode is skipped, as FFmpeg's own tools do: the decoder conceals
    the damage, and one bad packet should not fail a whole upload. More than
    ``_MAX_DAMAGED_PACKETS`` of them make the file corrupt.
    """
    damaged = 0
    for packet in _packets(source.container, streams):
        try:
            frames = cast("list[VideoFrame | AudioFrame]", packet.decode())
        except av.error.FFmpegError as exc:
            damaged += 1
            if damaged > _MAX_DAMAGED_PACKETS:
                what = f"has over {_MAX_DAMAGED_PACKETS} packets that cannot be decoded"
                raise _media_error(exc, Path(source.container.name), what) from exc
            continue
        yield from frames


def _packets(
    container: InputContainer, streams: tuple[VideoStream | AudioStream, ...]
) -> Iterator[Packet[Stream]]:
    """Demuxed packets, FFmpeg errors mapped."""
    try:
        yield from container.demux(streams)
    # PyAV raises IndexError for a packet of a stream that appeared after opening (MPEG-TS).
    except (av.error.FFmpegError, IndexError) as exc:
        raise _media_error(exc, Path(container.name), "cannot be demuxed") from exc


def _first_frame(source: _Source) -> VideoFrame:
    for frame in _decoded(source):
        return frame
    raise CorruptVideoError(f"no frame of {Path(source.container.name).name} decodes")


def _frame_near(source: _Source, offset: float) -> VideoFrame:
    """Seek to the keyframe before ``offset``, then decode up to the first frame at or after it.

    Past the end, that is the last frame. Demuxers without an index (MPEG-TS, Ogg) seek
    approximately: when the seek lands after ``offset`` or where nothing decodes (no keyframe
    before the end, a damaged tail), the frames are decoded from the start instead.
    """
    video = source.video
    time_base = video.time_base or Fraction(1, _AV_TIME_BASE)
    target = (video.start_time or 0) + math.floor(Fraction(offset) / time_base)
    _seek(source, target, video)
    frame, late = _decode_until(source, target)
    if frame is None or late:
        _seek(source, 0, None)  # in AV_TIME_BASE units: the start, for every demuxer
        frame, _ = _decode_until(source, target)
    if frame is None:
        raise CorruptVideoError(f"no frame of {Path(source.container.name).name} decodes")
    return frame


def _seek(source: _Source, timestamp: int, stream: VideoStream | None) -> None:
    try:
        source.container.seek(timestamp, stream=stream, backward=True)
    except av.error.FFmpegError as exc:
        raise _media_error(exc, Path(source.container.name), "cannot be seeked") from exc


def _decode_until(source: _Source, target: int) -> tuple[VideoFrame | None, bool]:
    """The first frame with ``pts >= target`` (else the last one decoded, else None), and
    whether the very first frame decoded was already past ``target``."""
    last = None
    for frame in _decoded(source):
        reached = frame.pts is not None and frame.pts >= target
        if reached and last is None:
            return frame, frame.pts != target
        last = frame
        if reached:
            break
    return last, False


# --- images ----------------------------------------------------------------------------------


def _display_size(frame: VideoFrame, video: VideoStream) -> tuple[int, int]:
    """Width and height as shown: sample aspect ratio and rotation applied."""
    width, height = frame.width, frame.height
    aspect = video.sample_aspect_ratio
    if aspect and aspect > 0:
        width = max(1, round(width * aspect))
    return (height, width) if _quarter_turn(frame) else (width, height)


def _quarter_turn(frame: VideoFrame) -> bool:
    return frame.rotation % 180 == 90


def _render(frame: VideoFrame, video: VideoStream, size: tuple[int, int]) -> Image.Image:
    """The frame as an RGB image of display ``size``: one swscale pass, then the rotation."""
    width, height = (size[1], size[0]) if _quarter_turn(frame) else size
    # VideoFrame.to_image is untyped in PyAV's stubs; it returns a PIL image.
    to_image = cast("Callable[..., Image.Image]", frame.to_image)
    image = to_image(width=width, height=height)
    transpose = _TRANSPOSE.get(frame.rotation % 360)
    return image.transpose(transpose) if transpose is not None else image


def _tile_size(
    frame: VideoFrame, video: VideoStream, tile_width: int, columns: int, rows: int
) -> tuple[int, int]:
    """Tile size for the frame's aspect ratio; the sheet must stay a valid JPEG."""
    width, height = _display_size(frame, video)
    tile_height = max(1, round(tile_width * height / width))
    if columns * tile_width > _JPEG_MAX_SIDE or rows * tile_height > _JPEG_MAX_SIDE:
        raise UnsupportedVideoError(
            f"a {columns}x{rows} contact sheet of a {width}x{height} video is too large"
        )
    return tile_width, tile_height


def _jpeg(image: Image.Image, quality: int) -> ImageBytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return ImageBytes(buffer.getvalue(), image.width, image.height)


def _check_offset(offset: float) -> None:
    if not math.isfinite(offset) or offset < 0:
        raise ValueError(f"offset must be a finite number of seconds >= 0, got {offset!r}")


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")


def _check_quality(quality: int) -> None:
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be between 1 and 100, got {quality!r}")


# --- transcoding -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _EncodeSettings:
    height: int
    video_bit_rate: int
    audio_bit_rate: int
    rotation: int


def _probe_rotation(path: Path, limits: VideoLimits) -> int:
    """The display rotation of the first frame; it must be known before the header is written."""
    with _open_source(path, limits) as source:
        return _first_frame(source).rotation


def _output_size(width: int, height: int, target_height: int) -> tuple[int, int]:
    """Scaled to ``target_height`` keeping the aspect ratio, never upscaled, both even."""
    if target_height >= height:
        return _floor_even(width), _floor_even(height)
    scaled_width = width * target_height / height
    return (
        min(_round_even(scaled_width), _floor_even(width)),
        min(_round_even(target_height), _floor_even(height)),
    )


def _round_even(value: float) -> int:
    return max(2, 2 * math.floor(value / 2 + 0.5))


def _floor_even(value: int) -> int:
    return max(2, value - value % 2)


def _transcode_into(
    source: _Source,
    temporary: Path,
    settings: _EncodeSettings,
    limits: VideoLimits,
    should_stop: Callable[[], bool],
) -> None:
    """Decode, scale and encode everything into ``temporary``; closes it however it ends."""
    output = av.open(
        str(temporary), "w", format="mp4", container_options={"movflags": "+faststart"}
    )
    try:
        encoder = _Encoder(output, source, settings, limits)
        streams = (source.video, source.audio) if source.audio else (source.video,)
        for frame in _frames(source, streams):
            if should_stop():
                raise TranscodeStoppedError("transcode stopped on request")
            encoder.add(frame)
        encoder.flush()
    except BaseException:
        # A failure to finish the file must not hide why we stopped.
        with suppress(Exception):
            output.close()
        raise
    output.close()


class _Encoder:
    """The output streams and the per-frame state (timestamps, resampler) of one transcode."""

    def __init__(
        self,
        output: OutputContainer,
        source: _Source,
        settings: _EncodeSettings,
        limits: VideoLimits,
    ) -> None:
        self._output = output
        self._limits = limits
        video = source.video
        self._time_base = video.time_base or Fraction(1, _AV_TIME_BASE)
        start = source.container.start_time or 0  # the earliest stream's start, in µs
        self._origin = start / _AV_TIME_BASE
        self._origin_pts = math.floor(Fraction(start, _AV_TIME_BASE) / self._time_base)
        rate = video.average_rate or video.guessed_rate or _DEFAULT_FPS
        self._frame_ticks = max(1, round(1 / (rate * self._time_base)))
        self._last_pts: int | None = None
        self._width, self._height = _output_size(
            video.codec_context.width, video.codec_context.height, settings.height
        )
        self._video = self._add_video(rate, video, settings)
        self._audio: AudioStream | None = None
        self._resampler: AudioResampler | None = None
        self._next_sample: int | None = None
        if source.audio is not None and source.audio.codec_context.sample_rate > 0:
            self._add_audio(source.audio, settings.audio_bit_rate)

    def _add_video(
        self, rate: Fraction, video: VideoStream, settings: _EncodeSettings
    ) -> VideoStream:
        stream = self._output.add_stream("libx264", rate=rate, options={"preset": "veryfast"})
        stream.width, stream.height = self._width, self._height
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = settings.video_bit_rate
        stream.codec_context.time_base = self._time_base
        if video.sample_aspect_ratio:
            stream.codec_context.sample_aspect_ratio = video.sample_aspect_ratio
        if settings.rotation:
            stream.set_display_rotation(settings.rotation)
        return stream

    def _add_audio(self, audio: AudioStream, bit_rate: int) -> None:
        rate = audio.codec_context.sample_rate
        layout = audio.codec_context.layout.name
        stream = self._output.add_stream("aac", rate=rate)
        stream.layout = layout
        stream.bit_rate = bit_rate
        self._audio = stream
        self._resampler = AudioResampler(
            format="fltp", layout=layout, rate=rate, frame_size=_AAC_FRAME_SIZE
        )

    def add(self, frame: VideoFrame | AudioFrame) -> None:
        if isinstance(frame, VideoFrame):
            self._add_video_frame(frame)
        else:
            self._add_audio_frame(frame)

    def _add_video_frame(self, frame: VideoFrame) -> None:
        pts = self._video_pts(frame)
        _check_duration(float(pts * self._time_base), self._limits)  # the header may lie
        self._last_pts = pts
        scaled = frame.reformat(width=self._width, height=self._height, format="yuv420p")
        scaled.pts = pts
        scaled.time_base = self._time_base
        self._output.mux(self._video.encode(scaled))

    def _video_pts(self, frame: VideoFrame) -> int:
        """The source timestamp from the start, made strictly increasing for the encoder.

        A missing or out-of-order one (B-frames in AVI) becomes one frame after the last.
        """
        last = self._last_pts
        pts = 0 if last is None else last + self._frame_ticks
        if frame.pts is not None:
            shifted = frame.pts - self._origin_pts
            if last is None or shifted > last:
                pts = max(0, shifted)
        return pts

    def _add_audio_frame(self, frame: AudioFrame) -> None:
        if self._audio is None or self._resampler is None:
            return
        if self._next_sample is None:  # keep the audio's offset from the start
            since = (frame.time - self._origin) if frame.time is not None else 0.0
            self._next_sample = max(0, round(since * self._audio.codec_context.sample_rate))
        self._encode_audio(self._resampler.resample(frame))

    def _encode_audio(self, frames: list[AudioFrame]) -> None:
        assert self._audio is not None and self._next_sample is not None
        for resampled in frames:
            resampled.pts = self._next_sample
            resampled.time_base = Fraction(1, self._audio.codec_context.sample_rate)
            self._next_sample += resampled.samples
            self._output.mux(self._audio.encode(resampled))

    def flush(self) -> None:
        """Drain the resampler and both encoders."""
        if self._audio is not None and self._resampler is not None:
            if self._next_sample is not None:
                self._encode_audio(self._resampler.resample(None))
            self._output.mux(self._audio.encode(None))
        self._output.mux(self._video.encode(None))
