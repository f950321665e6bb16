"""Video thumbnail throughput: seeking to the keyframe before the offset vs decoding from the start.

Generates a 60-second 1280x720 25 fps H.264 + AAC video with a keyframe every 2 s (GOP of 50
frames) into a temporary directory (30 s instead if generating 60 s takes over 20 s), then per
round, in this process:

* **baseline**: what a simple loop over ``container.decode(video=0)`` does: decode from the
  start up to the first frame at or after the offset, then scale it to 640 px wide and encode a
  JPEG, like ``thumbnail()`` does;
* **thumbnail()**: ``media.video.thumbnail`` at the same offsets (limits checks, keyframe seek,
  decoding only from that keyframe);
* **contact sheet**: one 4x4 ``media.video.contact_sheet``.

Prints thumbnails per second of each and their ratio, and the contact sheet's seconds, as the
median of ``--rounds`` rounds. Run with ``.venv/bin/python bench/video.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import av
from PIL import Image

from media.video import VideoLimits, contact_sheet, probe, thumbnail

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.unit.media.videos import make_video  # noqa: E402  (the tests' own generator)

WIDTH, HEIGHT, FPS, GOP = 1280, 720, 25, 50
MAX_GENERATION_SECONDS = 20.0
OFFSETS = 8
THUMB_WIDTH = 640
QUALITY = 85


def generate(directory: Path) -> Path:
    """60 s of video, or 30 s when generating 60 s would take over the time budget."""
    started = time.perf_counter()
    short = make_video(
        directory / "short.mp4", seconds=5, width=WIDTH, height=HEIGHT, fps=FPS, gop_size=GOP
    )
    per_second = (time.perf_counter() - started) / 5
    seconds = 60 if per_second * 60 <= MAX_GENERATION_SECONDS else 30
    short.unlink()
    started = time.perf_counter()
    path = make_video(
        directory / f"bench-{seconds}s.mp4",
        seconds=seconds,
        width=WIDTH,
        height=HEIGHT,
        fps=FPS,
        gop_size=GOP,
    )
    print(
        f"generated {seconds} s {WIDTH}x{HEIGHT} {FPS} fps H.264/AAC, GOP {GOP}: "
        f"{path.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s"
    )
    return path


def naive_thumbnail(path: Path, offset: float) -> bytes:
    """Decode from the start up to the frame at ``offset``; no seeking."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        time_base = stream.time_base
        assert time_base is not None
        target = (stream.start_time or 0) + int(offset / time_base)
        chosen = None
        for frame in container.decode(stream):
            chosen = frame
            if frame.pts is not None and frame.pts >= target:
                break
        assert chosen is not None
        height = round(chosen.height * THUMB_WIDTH / chosen.width)
        # VideoFrame.to_image is untyped in PyAV's stubs.
        to_image = cast(Callable[..., Image.Image], chosen.to_image)
        buffer = io.BytesIO()
        to_image(width=THUMB_WIDTH, height=height).save(buffer, "JPEG", quality=QUALITY)
        return buffer.getvalue()


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median is shown")
    args = parser.parse_args(argv)
    limits = VideoLimits()
    with tempfile.TemporaryDirectory(prefix="bench-video-") as tmp:
        path = generate(Path(tmp))
        duration = probe(path, limits).duration
        offsets = [(i + 0.5) * duration / OFFSETS for i in range(OFFSETS)]
        naive_rates: list[float] = []
        seek_rates: list[float] = []
        sheets: list[float] = []
        for round_number in range(1, args.rounds + 1):
            naive = timed(lambda: [naive_thumbnail(path, offset) for offset in offsets])
            seek = timed(
                lambda: [
                    thumbnail(path, o, max_width=THUMB_WIDTH, quality=QUALITY) for o in offsets
                ]
            )
            sheet = timed(lambda: contact_sheet(path, columns=4, rows=4))
            naive_rates.append(OFFSETS / naive)
            seek_rates.append(OFFSETS / seek)
            sheets.append(sheet)
            print(
                f"round {round_number}: baseline {OFFSETS / naive:.1f}/s, "
                f"thumbnail() {OFFSETS / seek:.1f}/s, contact sheet {sheet:.3f} s"
            )
    naive_median = statistics.median(naive_rates)
    seek_median = statistics.median(seek_rates)
    print(
        f"\nvideo thumbnail throughput, {OFFSETS} offsets over {duration:.0f} s, median of "
        f"{args.rounds} rounds"
    )
    print(f"  baseline (decode from the start): {naive_median:8.1f} thumbnails/s")
    print(f"  thumbnail() (keyframe seek):      {seek_median:8.1f} thumbnails/s")
    print(f"  ratio:                            {seek_median / naive_median:8.1f}x")
    print(f"  contact sheet 4x4:                {statistics.median(sheets):8.3f} s")


if __name__ == "__main__":
    main()
