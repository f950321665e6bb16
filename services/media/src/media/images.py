"""Image transforms and thumbnails with hard limits checked from the header, before decoding.

Plain domain code: no Celery, no network. Bad input is raised as a
:class:`~tasklane.errors.PermanentError` subclass (retrying cannot help).
Design: docs/media.md#image-input.
"""

from __future__ import annotations

import io
import math
import os
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Literal

from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from tasklane.errors import PermanentError

__all__ = [
    "ACCEPTED_INPUT",
    "CorruptImageError",
    "ImageFormat",
    "ImageLimits",
    "ImageOutput",
    "ImageTooLargeError",
    "Operations",
    "Resize",
    "UnsupportedImageError",
    "check_source",
    "thumbnails",
    "transform",
]

ImageFormat = Literal["jpeg", "png", "webp"]
ACCEPTED_INPUT = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})

# Imported for their side effect: each registers its opener in Image.OPEN.
_PLUGINS = (
    BmpImagePlugin,
    GifImagePlugin,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)
# A fixed order keeps identification deterministic; the magic numbers do not overlap anyway.
_OPEN_ORDER = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_PREFIX_BYTES = 16  # what Image.open hands to the accept functions
# The JPEG opener returns an MPO image (format "MPO") for multi-picture camera files.
_KEPT_FORMATS: MappingProxyType[str, ImageFormat] = MappingProxyType(
    {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp"}
)
_PILLOW_FORMATS: MappingProxyType[ImageFormat, str] = MappingProxyType(
    {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
)
_MEDIA_TYPES: MappingProxyType[ImageFormat, str] = MappingProxyType(
    {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
)
_ORIENTATION_TAG = 0x0112
_SWAPPED_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that exchange the axes
_ALPHA_MODES = MappingProxyType(
    {"RGBA": "RGBA", "LA": "LA", "PA": "RGBA", "RGBa": "RGBA", "La": "LA"}
)
_GRAY_MODES = frozenset({"1", "L"})
# An ICC profile of these colour spaces no longer describes the pixels once converted to RGB.
_NON_RGB_PROFILE_MODES = frozenset({"CMYK", "LAB"})
_RESAMPLE = Image.Resampling.LANCZOS
# Box-reduce first, then LANCZOS over the last factor of 3: much faster, indistinguishable output.
_REDUCING_GAP = 3.0

assert set(_OPEN_ORDER) == ACCEPTED_INPUT


class ImageTooLargeError(PermanentError):
    """The file or its pixel count is over a limit; the message names the limit and the value."""


class CorruptImageError(PermanentError):
    """The data is truncated or corrupt: the format was recognised but cannot be decoded."""


class UnsupportedImageError(PermanentError):
    """The file is not an image, or not in one of the formats of :data:`ACCEPTED_INPUT`."""


@dataclass(frozen=True)
class ImageLimits:
    """Hard limits: ``max_pixels`` (width*height of the source) is checked from the header, so a
    decompression bomb is refused before it is decoded."""

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_output_pixels: int = 50_000_000

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_pixels, self.max_output_pixels) <= 0:
            raise ValueError("image limits must be positive")


@dataclass(frozen=True)
class Resize:
    """``fit``: inside the box, aspect kept (a missing side is unbounded); ``fill``: cover the box
    then centre-crop to exactly it; ``crop``: cut the centred box, no scaling (clamped to the
    image). Nothing is made larger than the source unless ``upscale``."""

    width: int | None = None
    height: int | None = None
    fit: Literal["fit", "fill", "crop"] = "fit"
    upscale: bool = False

    def __post_init__(self) -> None:
        sides = [side for side in (self.width, self.height) if side is not None]
        if not sides:
            raise ValueError("resize needs a width or a height")
        if min(sides) <= 0:
            raise ValueError("resize width and height must be positive")
        if self.fit != "fit" and len(sides) != 2:
            raise ValueError(f"resize fit={self.fit!r} needs both width and height")


@dataclass(frozen=True)
class Operations:
    """What :func:`transform` does; ``format=None`` keeps a JPEG, PNG or WebP source's format
    (anything else becomes PNG). Stripping drops EXIF, XMP, comments and the ICC profile;
    keeping keeps EXIF (its Orientation removed once applied) and the ICC profile."""

    resize: Resize | None = None
    auto_orient: bool = True
    strip_metadata: bool = True
    format: ImageFormat | None = None
    quality: int = 85

    def __post_init__(self) -> None:
        _check_quality(self.quality)


@dataclass(frozen=True)
class ImageOutput:
    """One encoded image and its final dimensions."""

    data: bytes
    width: int
    height: int
    format: ImageFormat

    @property
    def media_type(self) -> str:
        return _MEDIA_TYPES[self.format]


@dataclass(frozen=True)
class _Metadata:
    """What is kept when not stripping, taken after auto-orient so Orientation is already gone."""

    exif: bytes | None
    icc_profile: bytes | None


_DEFAULT_LIMITS = ImageLimits()


def check_source(path: Path, limits: ImageLimits) -> tuple[str, int, int]:
    """Pillow format name, width and height, read from the header only (nothing is decoded)."""
    with _open_checked(path, limits) as source:
        return _format_name(source), source.width, source.height


def transform(path: Path, operations: Operations, limits: ImageLimits) -> ImageOutput:
    """Decode once, orient, resize and encode.

    Every limit is checked before the pixels are decoded, except that finding a PNG's EXIF
    Orientation may decode it (its eXIf chunk can follow the data) once its size has passed.
    """
    with _open_checked(path, limits) as source:
        orientation = _orientation(source) if operations.auto_orient else 1
        size = _oriented(source.size, orientation)
        target, draft_box = _plan(operations.resize, size)
        _check_output(target, limits)
        image = _load(source, draft_box, orientation)
        metadata = None if operations.strip_metadata else _metadata_of(image)
        image = _apply_resize(_normalize_mode(image), operations.resize, target)
        fmt = operations.format or _KEPT_FORMATS.get(_format_name(source), "png")
        return _encode(image, fmt, operations.quality, metadata)


def thumbnails(
    path: Path,
    sizes: Sequence[tuple[int, int]],
    *,
    format: ImageFormat = "jpeg",
    quality: int = 85,
    limits: ImageLimits = _DEFAULT_LIMITS,
) -> list[ImageOutput]:
    """Several ``fit`` thumbnails (no upscaling), in the order asked, from one decode.

    A JPEG is decoded at the smallest DCT scale still covering the largest thumbnail (the bulk
    of the saving); each smaller one is then resized from the previous, not from the source.
    Output is auto-oriented and stripped of metadata.
    """
    _check_quality(quality)
    for width, height in sizes:
        if width <= 0 or height <= 0:
            raise ValueError(f"thumbnail size {width}x{height} must be positive")
    if not sizes:
        return []
    with _open_checked(path, limits) as source:
        orientation = _orientation(source)
        size = _oriented(source.size, orientation)
        targets = [_fit_size(size, box, upscale=False) for box in sizes]
        for target in targets:
            _check_output(target, limits)
        largest = max(targets, key=_area)
        image = _normalize_mode(_load(source, largest, orientation))
        return _encode_cascade(image, targets, format, quality)


# --- opening and limits ------------------------------------------------------------------------


@contextmanager
def _open_checked(path: Path, limits: ImageLimits) -> Iterator[ImageFile.ImageFile]:
    """The identified, not yet decoded, source; file size and pixel count already checked."""
    with path.open("rb") as fp:
        # fstat of the open file: the size checked is the size of the file that is read.
        size = os.fstat(fp.fileno()).st_size
        if size > limits.max_bytes:
            raise ImageTooLargeError(f"file is {size} bytes, over max_bytes={limits.max_bytes}")
        source = _identify(fp, os.fspath(path))
        try:
            width, height = source.size
            if width * height > limits.max_pixels:
                raise ImageTooLargeError(
                    f"image is {width}x{height} = {width * height} pixels, "
                    f"over max_pixels={limits.max_pixels}"
                )
            yield source
        finally:
            source.close()


def _identify(fp: IO[bytes], filename: str) -> ImageFile.ImageFile:
    """What ``Image.open(formats=ACCEPTED_INPUT)`` does, minus its global bomb check."""
    prefix = fp.read(_PREFIX_BYTES)
    for name in _OPEN_ORDER:
        factory, accept = Image.OPEN[name]
        verdict = accept(prefix) if accept is not None else True
        if isinstance(verdict, str):  # recognised, but this Pillow build cannot read it
            raise UnsupportedImageError(f"{name} image cannot be read: {verdict}")
        if verdict:
            fp.seek(0)
            with _decode_errors(f"{name} header"):
                return factory(fp, filename)
    accepted = ", ".join(_OPEN_ORDER)
    raise UnsupportedImageError(f"not an image in an accepted format ({accepted})")


@contextmanager
def _decode_errors(what: str) -> Iterator[None]:
    """Pillow's decoding failures as permanent errors; anything else (a bug) propagates."""
    try:
        yield
    except Image.DecompressionBombError as exc:  # e.g. a GIF frame larger than its screen
        raise ImageTooLargeError(str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise CorruptImageError(f"{what} is corrupt or truncated: {exc}") from exc


def _check_output(target: tuple[int, int], limits: ImageLimits) -> None:
    if _area(target) > limits.max_output_pixels:
        width, height = target
        raise ImageTooLargeError(
            f"output would be {width}x{height} = {width * height} pixels, "
            f"over max_output_pixels={limits.max_output_pixels}"
        )


def _check_quality(quality: int) -> None:
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be within 1..100, not {quality}")


def _format_name(source: ImageFile.ImageFile) -> str:
    return source.format or ""


def _area(size: tuple[int, int]) -> int:
    return size[0] * size[1]


# --- geometry ----------------------------------------------------------------------------------


def _orientation(source: ImageFile.ImageFile) -> int:
    """The EXIF Orientation (1 when absent or invalid); may load a PNG to find its eXIf chunk."""
    with _decode_errors("EXIF data"):
        value = source.getexif().get(_ORIENTATION_TAG, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _oriented(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation in _SWAPPED_ORIENTATIONS else size


def _plan(
    resize: Resize | None, size: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """The output size, and the size a JPEG may be draft-decoded to (``None``: full size)."""
    if resize is None:
        return size, None
    box = (resize.width, resize.height)
    if resize.fit == "crop":
        return _crop_size(size, box), None
    if resize.fit == "fill":
        target = _fill_size(size, box, resize.upscale)
        return target, _cover_size(size, target)
    target = _fit_size(size, box, upscale=resize.upscale)
    return target, target


def _fit_size(
    size: tuple[int, int], box: tuple[int | None, int | None], *, upscale: bool
) -> tuple[int, int]:
    width, height = size
    scale = min(
        box[0] / width if box[0] is not None else math.inf,
        box[1] / height if box[1] is not None else math.inf,
    )
    if not upscale:
        scale = min(scale, 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _fill_size(
    size: tuple[int, int], box: tuple[int | None, int | None], upscale: bool
) -> tuple[int, int]:
    """The box, or, when that would upscale, the largest box of the same aspect inside the
    source (so the output still has the requested aspect)."""
    target = _both_sides(box)
    scale = max(target[0] / size[0], target[1] / size[1])
    if upscale or scale <= 1.0:
        return target
    return (
        max(1, min(size[0], round(target[0] / scale))),
        max(1, min(size[1], round(target[1] / scale))),
    )


def _cover_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """The smallest scaled source (aspect kept) that covers ``target``."""
    scale = max(target[0] / size[0], target[1] / size[1])
    return math.ceil(size[0] * scale), math.ceil(size[1] * scale)


def _crop_size(size: tuple[int, int], box: tuple[int | None, int | None]) -> tuple[int, int]:
    width, height = _both_sides(box)
    return min(width, size[0]), min(height, size[1])


def _both_sides(box: tuple[int | None, int | None]) -> tuple[int, int]:
    width, height = box
    assert width is not None and height is not None  # Resize.__post_init__ guarantees it
    return width, height


# --- decoding and pixels -----------------------------------------------------------------------


def _load(
    source: ImageFile.ImageFile, draft_box: tuple[int, int] | None, orientation: int
) -> Image.Image:
    """Decode (a JPEG at a reduced DCT scale when ``draft_box`` allows) and apply orientation.

    ``draft_box`` is in display orientation; the decoder works in stored orientation.
    """
    with _decode_errors("image data"):
        if draft_box is not None:  # a no-op for every format but JPEG
            source.draft("RGB", _oriented(draft_box, orientation))
        source.load()
        if orientation != 1:
            ImageOps.exif_transpose(source, in_place=True)
    return source


def _metadata_of(image: Image.Image) -> _Metadata:
    exif = image.getexif()
    icc = image.info.get("icc_profile") if image.mode not in _NON_RGB_PROFILE_MODES else None
    return _Metadata(
        exif=exif.tobytes() if len(exif) else None,
        icc_profile=icc if isinstance(icc, bytes) and icc else None,
    )


def _normalize_mode(image: Image.Image) -> Image.Image:
    """One of L, LA, RGB, RGBA: what every resize filter and every output encoder handles."""
    if image.mode == "F" or image.mode.startswith("I"):
        image = _to_8bit_gray(image)
    has_transparency = "transparency" in image.info
    target = _ALPHA_MODES.get(image.mode)
    if target is None:
        gray = image.mode in _GRAY_MODES
        if has_transparency:
            target = "LA" if gray else "RGBA"
        else:
            target = "L" if gray else "RGB"
    return image if image.mode == target else image.convert(target)


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit or float) gray to L, scaled: ``convert("L")`` alone would clip."""
    wide = image if image.mode in ("I", "F") else image.convert("I")
    high = _max_value(wide)
    if image.mode.startswith("I;16"):
        scale = 1 / 257
    elif image.mode == "F" and high <= 1.0:
        scale = 255.0  # float data in 0..1
    else:
        scale = 1 / 257 if high > 255 else 1.0
    gray = wide.point(lambda value: value * scale).convert("L")
    gray.info.pop("transparency", None)  # a 16-bit key colour means nothing at 8 bits
    return gray


def _max_value(image: Image.Image) -> float:
    extrema: Any = image.getextrema()  # (low, high) for a single-band image
    return float(extrema[1])


def _apply_resize(
    image: Image.Image, resize: Resize | None, target: tuple[int, int]
) -> Image.Image:
    if resize is None:
        return image
    if resize.fit == "crop":
        left = (image.width - target[0]) // 2
        top = (image.height - target[1]) // 2
        return image.crop((left, top, left + target[0], top + target[1]))
    if resize.fit == "fill":
        return ImageOps.fit(image, target, _RESAMPLE)
    return _resized(image, target)


def _resized(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    if image.size == target:
        return image
    return image.resize(target, _RESAMPLE, reducing_gap=_REDUCING_GAP)


# --- encoding ----------------------------------------------------------------------------------


def _encode_cascade(
    image: Image.Image, targets: list[tuple[int, int]], fmt: ImageFormat, quality: int
) -> list[ImageOutput]:
    """Largest first, each resized from the previous result; returned in the order asked."""
    outputs: dict[int, ImageOutput] = {}
    current = image
    for index in sorted(range(len(targets)), key=lambda i: _area(targets[i]), reverse=True):
        current = _resized(current, targets[index])
        outputs[index] = _encode(current, fmt, quality, None)
    return [outputs[index] for index in range(len(targets))]


def _encode(
    image: Image.Image, fmt: ImageFormat, quality: int, metadata: _Metadata | None
) -> ImageOutput:
    if fmt == "jpeg":
        image = _flatten(image)
    # Some encoders fall back to image.info (PNG: icc_profile; JPEG: comment): only what is
    # passed below may be written.
    image.info = {}
    buffer = io.BytesIO()
    image.save(buffer, _PILLOW_FORMATS[fmt], **_save_options(fmt, quality, metadata))
    return ImageOutput(buffer.getvalue(), image.width, image.height, fmt)


def _flatten(image: Image.Image) -> Image.Image:
    """JPEG has no alpha: composite onto white."""
    if image.mode not in ("RGBA", "LA"):
        return image
    background = Image.new(image.mode[:-1], image.size, "white")
    background.paste(image, mask=image.getchannel("A"))
    return background


def _save_options(fmt: ImageFormat, quality: int, metadata: _Metadata | None) -> dict[str, Any]:
    options: dict[str, Any]
    if fmt == "jpeg":
        options = {"quality": quality, "optimize": False, "progressive": False}
    elif fmt == "webp":
        options = {"quality": quality, "method": 4}
    else:
        options = {"compress_level": 6}
    if metadata is not None and metadata.exif is not None:
        options["exif"] = metadata.exif
    if metadata is not None and metadata.icc_profile is not None:
        options["icc_profile"] = metadata.icc_profile
    return options
