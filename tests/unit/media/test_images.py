"""media.images: transforms, orientation, metadata, formats, limits and thumbnails.

Every image is generated here with Pillow; nothing is downloaded.
"""

from __future__ import annotations

import io
import pickle
import random
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageCms, ImageDraw

from media.images import (
    ACCEPTED_INPUT,
    CorruptImageError,
    ImageFormat,
    ImageLimits,
    ImageOutput,
    ImageTooLargeError,
    Operations,
    Resize,
    UnsupportedImageError,
    check_source,
    thumbnails,
    transform,
)
from tasklane.errors import PermanentError

LIMITS = ImageLimits()
RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
ORIENTATION = 0x0112
MAKE = 0x010F
MAGIC = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n", "webp": b"RIFF"}


def quadrants(width: int = 400, height: int = 300) -> Image.Image:
    """Top-left red, top-right green, bottom-left blue, bottom-right yellow."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    half_w, half_h = width // 2, height // 2
    draw.rectangle((0, 0, half_w - 1, half_h - 1), fill=RED)
    draw.rectangle((half_w, 0, width - 1, half_h - 1), fill=GREEN)
    draw.rectangle((0, half_h, half_w - 1, height - 1), fill=BLUE)
    draw.rectangle((half_w, half_h, width - 1, height - 1), fill=YELLOW)
    return image


def save(image: Image.Image, path: Path, format: str, **options: object) -> Path:
    image.save(path, format, **options)
    return path


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.frombytes(
        "RGB", (width, height), random.Random(seed).randbytes(width * height * 3)
    )


def decoded(output: ImageOutput) -> Image.Image:
    image = Image.open(io.BytesIO(output.data))
    image.load()
    return image


def near(pixel: object, colour: tuple[int, ...], tolerance: int = 40) -> bool:
    assert isinstance(pixel, tuple)
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


def resized(path: Path, resize: Resize) -> Image.Image:
    output = transform(path, Operations(resize=resize, format="png"), LIMITS)
    image = decoded(output)
    assert image.size == (output.width, output.height)
    return image


@pytest.fixture
def png_400x300(tmp_path: Path) -> Path:
    return save(quadrants(), tmp_path / "q.png", "PNG")


def sideways_jpeg(path: Path, exif: Image.Exif | None = None, **options: object) -> Path:
    """40x20 stored, left half red, right half blue, Orientation 6: upright it is 20x40, red on
    top (the stored left side is the displayed top)."""
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 20))
    exif = exif if exif is not None else Image.Exif()
    exif[ORIENTATION] = 6
    return save(image, path, "JPEG", exif=exif, quality=95, **options)


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# --- resize ------------------------------------------------------------------------------------


def test_fit_keeps_the_aspect_inside_the_box(png_400x300: Path) -> None:
    assert resized(png_400x300, Resize(100, 100)).size == (100, 75)
    assert resized(png_400x300, Resize(width=200)).size == (200, 150)
    assert resized(png_400x300, Resize(height=60)).size == (80, 60)


def test_fit_never_upscales_unless_asked(png_400x300: Path) -> None:
    assert resized(png_400x300, Resize(800, 800)).size == (400, 300)
    assert resized(png_400x300, Resize(800, 800, upscale=True)).size == (800, 600)


def test_fill_covers_the_box_then_crops_to_it(png_400x300: Path) -> None:
    image = resized(png_400x300, Resize(100, 100, fit="fill")).convert("RGB")
    assert image.size == (100, 100)
    # The centred 300x300 region scaled down: each corner keeps its quadrant's colour.
    assert near(image.getpixel((5, 5)), RED)
    assert near(image.getpixel((94, 94)), YELLOW)


def test_fill_without_upscale_keeps_the_requested_aspect(png_400x300: Path) -> None:
    assert resized(png_400x300, Resize(800, 800, fit="fill")).size == (300, 300)
    assert resized(png_400x300, Resize(800, 800, fit="fill", upscale=True)).size == (800, 800)


def test_crop_cuts_the_centred_region_without_scaling(png_400x300: Path) -> None:
    image = resized(png_400x300, Resize(50, 40, fit="crop")).convert("RGB")
    assert image.size == (50, 40)
    # Source region (175, 130)-(225, 170) straddles the centre: one quadrant per corner.
    assert image.getpixel((0, 0)) == RED
    assert image.getpixel((49, 0)) == GREEN
    assert image.getpixel((0, 39)) == BLUE
    assert image.getpixel((49, 39)) == YELLOW
    assert image.getpixel((24, 19)) == RED and image.getpixel((25, 20)) == YELLOW


def test_crop_is_clamped_to_the_image(png_400x300: Path) -> None:
    assert resized(png_400x300, Resize(1000, 50, fit="crop")).size == (400, 50)


def test_resize_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="width or a height"):
        Resize()
    with pytest.raises(ValueError, match="positive"):
        Resize(width=0)
    with pytest.raises(ValueError, match="needs both"):
        Resize(width=10, fit="fill")
    with pytest.raises(ValueError, match="quality"):
        Operations(quality=0)
    with pytest.raises(ValueError, match="positive"):
        ImageLimits(max_pixels=0)


# --- orientation and metadata ------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    output = transform(sideways_jpeg(tmp_path / "s.jpg"), Operations(), LIMITS)
    image = decoded(output)
    assert (output.width, output.height) == image.size == (20, 40)
    assert near(image.getpixel((0, 0)), RED)
    assert near(image.getpixel((19, 39)), BLUE)


def test_without_auto_orient_the_stored_pixels_are_kept(tmp_path: Path) -> None:
    path = sideways_jpeg(tmp_path / "s.jpg")
    output = transform(path, Operations(auto_orient=False, strip_metadata=False), LIMITS)
    image = decoded(output)
    assert image.size == (40, 20)
    assert image.getexif()[ORIENTATION] == 6  # still right for a viewer


def test_stripped_output_has_no_exif_icc_or_comment(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[MAKE] = "Tasklane"
    path = sideways_jpeg(tmp_path / "s.jpg", exif, icc_profile=srgb_profile(), comment=b"hi")
    for format in ("jpeg", "png", "webp"):
        image = decoded(transform(path, Operations(format=format), LIMITS))
        assert not image.getexif(), format
        assert "icc_profile" not in image.info, format
        assert "comment" not in image.info, format


def test_kept_metadata_has_exif_and_icc_with_orientation_reset(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[MAKE] = "Tasklane"
    profile = srgb_profile()
    path = sideways_jpeg(tmp_path / "s.jpg", exif, icc_profile=profile)
    for format in ("jpeg", "png", "webp"):
        output = transform(path, Operations(strip_metadata=False, format=format), LIMITS)
        image = decoded(output)
        kept = image.getexif()
        assert image.size == (20, 40), format
        assert kept[MAKE] == "Tasklane", format
        assert kept.get(ORIENTATION, 1) == 1, format
        assert image.info["icc_profile"] == profile, format


# --- formats and modes -------------------------------------------------------------------------


@pytest.mark.parametrize("format", ["jpeg", "png", "webp"])
def test_output_formats(png_400x300: Path, format: ImageFormat) -> None:
    output = transform(png_400x300, Operations(format=format), LIMITS)
    assert output.data.startswith(MAGIC[format])
    assert output.media_type == f"image/{format}"
    assert decoded(output).format == format.upper()
    if format == "webp":
        assert output.data[8:12] == b"WEBP"


@pytest.mark.parametrize(
    ("source_format", "expected"),
    [
        ("JPEG", "jpeg"),
        ("PNG", "png"),
        ("WEBP", "webp"),
        ("GIF", "png"),
        ("BMP", "png"),
        ("TIFF", "png"),
    ],
)
def test_source_format_is_kept_when_web_friendly(
    tmp_path: Path, source_format: str, expected: str
) -> None:
    path = save(quadrants(40, 30), tmp_path / "source", source_format)
    assert check_source(path, LIMITS) == (source_format, 40, 30)
    output = transform(path, Operations(), LIMITS)
    assert output.format == expected
    assert output.data.startswith(MAGIC[expected])


def test_rgba_to_jpeg_is_flattened_onto_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    image.paste((255, 0, 0, 255), (10, 0, 20, 10))
    path = save(image, tmp_path / "a.png", "PNG")
    out = decoded(transform(path, Operations(format="jpeg"), LIMITS))
    assert out.mode == "RGB"
    assert near(out.getpixel((2, 5)), (255, 255, 255), 8)
    assert near(out.getpixel((17, 5)), RED)


def test_alpha_is_kept_for_png_and_webp(tmp_path: Path) -> None:
    image = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    path = save(image, tmp_path / "a.png", "PNG")
    for format in ("png", "webp"):
        out = decoded(transform(path, Operations(format=format), LIMITS))
        assert out.mode == "RGBA", format
        assert out.getchannel("A").getpixel((5, 5)) == 0, format


def test_palette_with_transparency_becomes_rgba(tmp_path: Path) -> None:
    image = Image.new("P", (10, 10), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(0, (0, 0, 5, 10))
    path = save(image, tmp_path / "p.png", "PNG", transparency=0)
    out = decoded(transform(path, Operations(), LIMITS))
    assert out.mode == "RGBA"
    assert out.getpixel((1, 1)) == (0, 0, 0, 0)
    assert out.getpixel((8, 8)) == (255, 0, 0, 255)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "c.jpg", "JPEG")
    out = decoded(transform(path, Operations(), LIMITS))
    assert (out.format, out.mode) == ("JPEG", "RGB")
    assert near(out.getpixel((8, 8)), RED)


def test_16_bit_gray_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = save(Image.new("I;16", (8, 8), 32896), tmp_path / "g.png", "PNG")  # 50% gray
    out = decoded(transform(path, Operations(), LIMITS))
    assert out.mode == "L"
    assert out.getpixel((4, 4)) == 128


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (12, 12), colour) for colour in (RED, BLUE)]
    path = tmp_path / "a.gif"
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    output = transform(path, Operations(), LIMITS)
    assert output.format == "png"
    assert decoded(output).convert("RGB").getpixel((6, 6)) == RED


def test_lower_quality_gives_a_smaller_file(tmp_path: Path) -> None:
    path = save(noise(128, 128), tmp_path / "n.png", "PNG")
    for format in ("jpeg", "webp"):
        low = transform(path, Operations(format=format, quality=30), LIMITS)
        high = transform(path, Operations(format=format, quality=90), LIMITS)
        assert len(low.data) < len(high.data), format


# --- limits and bad input ----------------------------------------------------------------------


def bomb_png(path: Path, width: int, height: int) -> Path:
    """A 1x1 PNG whose IHDR claims ``width`` x ``height``: nothing that size is ever allocated."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def test_decompression_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    path = bomb_png(tmp_path / "bomb.png", 20000, 20000)
    message = "image is 20000x20000 = 400000000 pixels, over max_pixels=50000000"
    with pytest.raises(ImageTooLargeError) as caught:
        check_source(path, LIMITS)
    assert str(caught.value) == message
    with pytest.raises(ImageTooLargeError, match="max_pixels"):
        transform(path, Operations(), LIMITS)
    with pytest.raises(ImageTooLargeError, match="max_pixels"):
        thumbnails(path, [(100, 100)])


def test_limits_are_ours_not_pillows_global(tmp_path: Path) -> None:
    # Over Pillow's own default bomb limit, but within ours: identified, no warning, no error.
    path = bomb_png(tmp_path / "big.png", 20000, 20000)
    assert check_source(path, ImageLimits(max_pixels=400_000_000)) == ("PNG", 20000, 20000)
    small = save(quadrants(20, 20), tmp_path / "small.png", "PNG")
    with pytest.raises(ImageTooLargeError, match="20x20 = 400 pixels, over max_pixels=399"):
        check_source(small, ImageLimits(max_pixels=399))


def test_file_over_max_bytes_is_refused(png_400x300: Path) -> None:
    size = png_400x300.stat().st_size
    with pytest.raises(ImageTooLargeError, match=f"file is {size} bytes, over max_bytes=100"):
        check_source(png_400x300, ImageLimits(max_bytes=100))
    assert check_source(png_400x300, ImageLimits(max_bytes=size))[0] == "PNG"


def test_output_over_max_output_pixels_is_refused(png_400x300: Path) -> None:
    limits = ImageLimits(max_output_pixels=10_000)
    upscale = Operations(resize=Resize(1000, 1000, upscale=True))
    with pytest.raises(ImageTooLargeError, match="1000x750 = 750000 pixels, over max_output"):
        transform(png_400x300, upscale, limits)
    with pytest.raises(ImageTooLargeError, match="max_output_pixels"):
        transform(png_400x300, Operations(resize=Resize(200, 200, fit="fill")), limits)
    with pytest.raises(ImageTooLargeError, match="max_output_pixels"):
        thumbnails(png_400x300, [(100, 100), (400, 400)], limits=limits)
    assert transform(png_400x300, Operations(resize=Resize(100, 100)), limits).width == 100


def test_truncated_jpeg_is_corrupt(tmp_path: Path) -> None:
    data = (save(noise(200, 200), tmp_path / "n.jpg", "JPEG")).read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert check_source(path, LIMITS) == ("JPEG", 200, 200)  # the header is intact
    with pytest.raises(CorruptImageError, match="truncated"):
        transform(path, Operations(), LIMITS)
    with pytest.raises(CorruptImageError):
        thumbnails(path, [(50, 50)])


def test_broken_header_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "head.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    with pytest.raises(CorruptImageError, match="PNG header"):
        check_source(path, LIMITS)


@pytest.mark.parametrize(
    "content", [random.Random(1).randbytes(4096), b"just some text\n" * 50, b""]
)
def test_not_an_image_is_unsupported(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(content)
    with pytest.raises(UnsupportedImageError, match="not an image in an accepted format"):
        check_source(path, LIMITS)
    with pytest.raises(UnsupportedImageError):
        transform(path, Operations(), LIMITS)


@pytest.mark.parametrize("format", ["ICO", "TGA", "PCX", "PPM"])
def test_formats_outside_accepted_input_are_unsupported(tmp_path: Path, format: str) -> None:
    assert format not in ACCEPTED_INPUT
    path = save(quadrants(32, 32), tmp_path / "x.png", format)  # a misleading name
    with pytest.raises(UnsupportedImageError):
        check_source(path, LIMITS)


def test_errors_are_permanent_and_pickle() -> None:
    for cls in (ImageTooLargeError, CorruptImageError, UnsupportedImageError):
        error = pickle.loads(pickle.dumps(cls("why")))
        assert isinstance(error, PermanentError)
        assert type(error) is cls and error.args == ("why",)


# --- thumbnails --------------------------------------------------------------------------------


def test_thumbnails_have_bounding_sizes_in_the_order_asked(tmp_path: Path) -> None:
    path = save(noise(300, 200).resize((3000, 2000)), tmp_path / "big.jpg", "JPEG", quality=90)
    outputs = thumbnails(path, [(320, 320), (1280, 1280), (640, 480), (100, 1000)])
    assert [(o.width, o.height) for o in outputs] == [
        (320, 213),
        (1280, 853),
        (640, 427),
        (100, 67),
    ]
    for output in outputs:
        image = decoded(output)
        assert image.format == "JPEG" and image.size == (output.width, output.height)


def test_thumbnails_keep_content_and_never_upscale(tmp_path: Path) -> None:
    path = save(quadrants(4000, 3000), tmp_path / "q.jpg", "JPEG", quality=95)
    large, small = thumbnails(path, [(8000, 8000), (40, 40)], format="png")
    assert (large.width, large.height) == (4000, 3000)
    image = decoded(small).convert("RGB")
    assert image.size == (40, 30)
    assert near(image.getpixel((2, 2)), RED) and near(image.getpixel((37, 2)), GREEN)
    assert near(image.getpixel((2, 27)), BLUE) and near(image.getpixel((37, 27)), YELLOW)


def test_thumbnails_are_oriented_and_stripped(tmp_path: Path) -> None:
    # Stored 2000x1000 with Orientation 6: upright it is 1000x2000, the stored left half on top.
    source = Image.new("RGB", (2000, 1000), BLUE)
    source.paste(RED, (0, 0, 1000, 1000))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif[MAKE] = "Tasklane"
    path = save(source, tmp_path / "r.jpg", "JPEG", exif=exif, icc_profile=srgb_profile())
    outputs = thumbnails(path, [(100, 100), (500, 500)], format="webp")
    assert [(o.width, o.height) for o in outputs] == [(50, 100), (250, 500)]
    for output in outputs:
        image = decoded(output)
        assert near(image.getpixel((5, 5)), RED)
        assert near(image.getpixel((5, image.height - 5)), BLUE)
        assert not image.getexif() and "icc_profile" not in image.info


def test_thumbnails_of_a_png_with_alpha(tmp_path: Path) -> None:
    path = save(Image.new("RGBA", (300, 100), (0, 0, 255, 0)), tmp_path / "a.png", "PNG")
    (jpeg,) = thumbnails(path, [(30, 30)], format="jpeg")
    (png,) = thumbnails(path, [(60, 60)], format="png")
    assert (jpeg.width, jpeg.height) == (30, 10) and decoded(jpeg).mode == "RGB"
    assert near(decoded(jpeg).getpixel((5, 5)), (255, 255, 255), 8)
    assert (png.width, png.height) == (60, 20) and decoded(png).mode == "RGBA"


def test_thumbnail_arguments_are_validated(png_400x300: Path) -> None:
    assert thumbnails(png_400x300, []) == []
    with pytest.raises(ValueError, match="positive"):
        thumbnails(png_400x300, [(0, 10)])
    with pytest.raises(ValueError, match="quality"):
        thumbnails(png_400x300, [(10, 10)], quality=101)
