"""Synthetic test videos made with PyAV: nothing is downloaded.

Each frame's background colour encodes its time (red rises from 0 to 255 over the video, blue
falls), so a test can tell which part of the video a decoded frame comes from with
:func:`time_of`; a white square moves across the top so consecutive frames differ too. The audio
track, when asked for, is a sine tone.
"""

from __future__ import annotations

import array
import math
from collections.abc import Callable
from pathlib import Path
from typing import cast

import av
from av.audio.stream import AudioStream
from av.container import OutputContainer
from av.video.stream import VideoStream
from PIL import Image, ImageStat

SAMPLE_RATE = 44_100
AUDIO_FRAME = 1024
# 10 whole periods per 1024-sample frame (about 431 Hz), so one frame of samples repeats.
TONE_PERIODS = 10
SQUARE = 40


def make_video(
    path: Path,
    *,
    seconds: float,
    width: int,
    height: int,
    fps: int = 25,
    audio: bool = True,
    codec: str = "libx264",
    audio_codec: str = "aac",
    gop_size: int | None = None,
    rotation: int = 0,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Write a video of ``seconds`` at ``fps``; the container is chosen by ``path``'s suffix."""
    frames = max(1, round(seconds * fps))
    with av.open(str(path), "w", container_options=container_options or {}) as output:
        video = _video_stream(output, codec, fps, width, height, gop_size, rotation)
        tone = _audio_stream(output, audio_codec) if audio else None
        square = Image.new("RGB", (SQUARE, SQUARE), "white")
        # VideoFrame.from_image is untyped in PyAV's stubs.
        from_image = cast(Callable[[Image.Image], av.VideoFrame], av.VideoFrame.from_image)
        for index in range(frames):
            image = Image.new("RGB", (width, height), colour_at(index / frames))
            x = (width - SQUARE) * index // max(1, frames - 1)
            image.paste(square, (x, 0))
            frame = from_image(image).reformat(format=video.pix_fmt)
            frame.pts = index
            output.mux(video.encode(frame))
        output.mux(video.encode(None))
        if tone is not None:
            _write_tone(output, tone, frames / fps)
    return path


def make_audio(path: Path, *, seconds: float, codec: str = "aac") -> Path:
    """An audio-only file (``.wav`` with ``pcm_s16le``, ``.m4a``/``.mp4``/``.ogg`` ...)."""
    with av.open(str(path), "w") as output:
        stream = output.add_stream(codec, rate=SAMPLE_RATE)
        assert isinstance(stream, AudioStream)
        stream.layout = "mono"
        _write_tone(output, stream, seconds)
    return path


def make_truncated(source: Path, target: Path, fraction: float = 0.3) -> Path:
    """The first ``fraction`` of ``source``'s bytes, as a broken upload would leave it."""
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def colour_at(share: float) -> tuple[int, int, int]:
    """The background colour of the frame ``share`` (0..1) of the way through the video."""
    red = round(255 * min(max(share, 0.0), 1.0))
    return red, 64, 255 - red


def time_of(image: Image.Image, seconds: float) -> float:
    """When, in a video of ``seconds``, this decoded frame was shown (within a frame or two)."""
    below_square = image.convert("RGB").crop((0, image.height // 2, image.width, image.height))
    red = ImageStat.Stat(below_square).mean[0]
    return red / 255 * seconds


def _video_stream(
    output: OutputContainer,
    codec: str,
    fps: int,
    width: int,
    height: int,
    gop_size: int | None,
    rotation: int,
) -> VideoStream:
    options = {"preset": "veryfast"} if codec == "libx264" else {}
    stream = output.add_stream(codec, rate=fps, options=options)
    assert isinstance(stream, VideoStream)
    stream.width, stream.height = width, height
    stream.pix_fmt = "rgb24" if codec == "png" else "yuv420p"
    if gop_size is not None:
        stream.gop_size = gop_size
    if rotation:
        stream.set_display_rotation(rotation)
    return stream


def _audio_stream(output: OutputContainer, codec: str) -> AudioStream:
    stream = output.add_stream(codec, rate=SAMPLE_RATE)
    assert isinstance(stream, AudioStream)
    stream.layout = "mono"
    return stream


def _write_tone(output: OutputContainer, stream: AudioStream, seconds: float) -> None:
    """Mono sine frames in the encoder's own sample format (``fltp`` for AAC, ``s16`` for PCM,
    ``s32p`` for MP3) and frame size (1024 for AAC, 1152 for MP3)."""
    sample_format = stream.codec_context.format.name
    size = stream.codec_context.frame_size or AUDIO_FRAME
    if sample_format.startswith("flt"):
        data = array.array("f", (0.3 * _wave(i) for i in range(size))).tobytes()
    else:
        typecode, peak = ("i", 2**31 - 1) if sample_format.startswith("s32") else ("h", 2**15 - 1)
        data = array.array(typecode, (round(0.3 * peak * _wave(i)) for i in range(size))).tobytes()
    for start in range(0, round(seconds * SAMPLE_RATE), size):
        frame = av.AudioFrame(format=sample_format, layout="mono", samples=size)
        frame.planes[0].update(data)
        frame.sample_rate = SAMPLE_RATE
        frame.pts = start
        output.mux(stream.encode(frame))
    output.mux(stream.encode(None))


def _wave(index: int) -> float:
    return math.sin(2 * math.pi * TONE_PERIODS * index / AUDIO_FRAME)
