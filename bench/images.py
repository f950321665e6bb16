"""Thumbnail speed and peak memory of ``media.images.thumbnails`` against plain Pillow.

Generates a 12-megapixel JPEG (4000x3000: gradients, noise and shapes, quality 90, EXIF
Orientation 1) in a temporary directory, then in this one process alternates, per round:

* **one size**: baseline ``Image.open`` + ``thumbnail((320, 320))`` + ``save(JPEG, quality=85)``
  against ``thumbnails(path, [(320, 320)])``; the target is a median ratio <= 1.1x;
* **three sizes** (1280, 640, 320): the baseline opens, thumbnails and saves three times from
  scratch; ``thumbnails`` decodes once.

Then the peak RSS of each variant, each run once in a fresh subprocess, minus that of a child
which only imports the modules. Run ``.venv/bin/python bench/images.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import io
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from media.images import thumbnails

TARGET_RATIO = 1.1
ONE_SIZE = [(320, 320)]
THREE_SIZES = [(1280, 1280), (640, 640), (320, 320)]
SOURCE_SIZE = (4000, 3000)
ORIENTATION = 0x0112
Variant = Callable[[Path], int]


def make_source(path: Path) -> None:
    """A photo-like JPEG: smooth gradients, sensor-like noise and hard-edged shapes."""
    width, height = SOURCE_SIZE
    red = Image.linear_gradient("L").resize(SOURCE_SIZE)
    green = Image.radial_gradient("L").resize(SOURCE_SIZE)
    blue = Image.linear_gradient("L").rotate(90).resize(SOURCE_SIZE)
    image = Image.merge("RGB", (red, green, blue))
    noise = Image.effect_noise(SOURCE_SIZE, 24).convert("RGB")
    image = Image.blend(image, noise, 0.25)
    draw = ImageDraw.Draw(image)
    for i in range(40):
        x, y = (i * 397) % width, (i * 211) % height
        colour = ((i * 53) % 256, (i * 97) % 256, (i * 31) % 256)
        draw.ellipse((x, y, x + 300, y + 200), fill=colour)
        draw.rectangle((y, x % height, y + 150, x % height + 90), outline=colour, width=6)
        draw.line((0, y, width, (y * 7) % height), fill=colour, width=3)
    exif = Image.Exif()
    exif[ORIENTATION] = 1
    image.save(path, "JPEG", quality=90, exif=exif)


def baseline(path: Path, sizes: Sequence[tuple[int, int]]) -> int:
    """What a caller would write with Pillow alone: one open, thumbnail and save per size."""
    total = 0
    for size in sizes:
        with Image.open(path) as image:
            image.thumbnail(size)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=85)
            total += buffer.tell()
    return total


def tasklane(path: Path, sizes: Sequence[tuple[int, int]]) -> int:
    return sum(len(output.data) for output in thumbnails(path, sizes))


VARIANTS: dict[str, Variant] = {
    "baseline-1": lambda path: baseline(path, ONE_SIZE),
    "tasklane-1": lambda path: tasklane(path, ONE_SIZE),
    "baseline-3": lambda path: baseline(path, THREE_SIZES),
    "tasklane-3": lambda path: tasklane(path, THREE_SIZES),
}


def timed(variant: Variant, path: Path) -> float:
    started = time.perf_counter()
    variant(path)
    return time.perf_counter() - started


def compare(name: str, base: Variant, ours: Variant, path: Path, rounds: int) -> float:
    """Median seconds of each, alternating which runs first; prints and returns the ratio."""
    base(path), ours(path)  # warm-up: plugin imports, first allocations
    base_times: list[float] = []
    our_times: list[float] = []
    for round_number in range(rounds):
        if round_number % 2:
            our_times.append(timed(ours, path))
            base_times.append(timed(base, path))
        else:
            base_times.append(timed(base, path))
            our_times.append(timed(ours, path))
    base_median, our_median = statistics.median(base_times), statistics.median(our_times)
    ratio = our_median / base_median
    print(f"{name}  ({rounds} rounds, median)")
    print(f"  baseline (Pillow open+thumbnail+save) {base_median * 1000:8.1f} ms")
    print(f"  tasklane (thumbnails)                 {our_median * 1000:8.1f} ms")
    print(f"  ratio tasklane/baseline               {ratio:8.2f}x")
    return ratio


def rss_child(variant: str, path: Path) -> None:
    """Runs in a fresh interpreter: one variant (or none), then prints peak RSS in KiB."""
    if variant != "imports":
        VARIANTS[variant](path)
    print(peak_rss_kib())


def peak_rss_kib() -> int:
    """This process's peak RSS in KiB.

    On Linux ``ru_maxrss`` is not reset by exec: a child spawned by this (large) process reports
    at least the parent's size, which hides every difference; ``VmHWM`` belongs to the new
    address space only. Elsewhere fall back to ``ru_maxrss``.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_peak_kib(variant: str, path: Path) -> int:
    command = [sys.executable, __file__, "--rss-child", variant, str(path)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return int(done.stdout.strip())


def report_rss(path: Path) -> None:
    imports = child_peak_kib("imports", path)
    print(f"peak RSS above a child that only imports ({imports / 1024:.1f} MiB), one run each")
    for variant in VARIANTS:
        extra = child_peak_kib(variant, path) - imports
        print(f"  {variant:<12} {extra / 1024:8.1f} MiB")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per case")
    parser.add_argument("--rss-child", nargs=2, metavar=("VARIANT", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child[0], Path(args.rss_child[1]))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-images-") as directory:
        path = Path(directory) / "source.jpg"
        make_source(path)
        megabytes = path.stat().st_size / 1024 / 1024
        print(f"source: {SOURCE_SIZE[0]}x{SOURCE_SIZE[1]} JPEG q90, {megabytes:.1f} MiB\n")
        one = compare(
            "one size 320x320", VARIANTS["baseline-1"], VARIANTS["tasklane-1"], path, args.rounds
        )
        verdict = "met" if one <= TARGET_RATIO else "MISSED"
        print(f"  target <= {TARGET_RATIO}x: {verdict}\n")
        compare(
            "three sizes 1280/640/320",
            VARIANTS["baseline-3"],
            VARIANTS["tasklane-3"],
            path,
            args.rounds,
        )
        print()
        report_rss(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
