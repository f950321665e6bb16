"""Contracts of the media service: images on ``media.image`` (fast), video on ``media.video``.

Sources are artifact URIs of the platform's store (``file://`` or ``s3://``) or http(s) URLs,
fetched through the SSRF guard. Outputs go to the same store under a key derived from the
source's content and the requested operations, so a redelivered task overwrites its own output
instead of adding a second one; an optional ``idempotency_key`` skips the work altogether.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from tasklane.contracts.base import Payload, Result, RetryPolicy, TaskContract
from tasklane.contracts.fields import Boolean, Integer, Number, SourceUri
from tasklane.errors import TransientError

ImageFormat = Literal["jpeg", "png", "webp"]


class MediaPayload(Payload):
    """What every media task takes: a source and an optional idempotency key."""

    source: SourceUri = Field(
        min_length=1,
        max_length=4096,
        description="An artifact URI (file://, s3://) or an http(s) URL of the input.",
    )
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


# The bounds inside the union: outside it pydantic exports "ge"/"le", unknown to JSON Schema.
_Side = Annotated[int, Field(ge=1, le=20_000), *Integer.__metadata__]


def _given(*names: str) -> dict[str, Any]:
    """Schema of an object whose ``names`` are there and are integers (not null)."""
    return {"required": list(names), "properties": {name: {"type": "integer"} for name in names}}


class Resize(Payload):
    """How to size the image: fit in a box, fill a box (cropping), or crop a region."""

    # The schema of _sides.
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [_given("width"), _given("height")],
            "if": {"required": ["fit"], "properties": {"fit": {"enum": ["fill", "crop"]}}},
            "then": _given("width", "height"),
        }
    )

    width: _Side | None = None
    height: _Side | None = None
    fit: Literal["fit", "fill", "crop"] = "fit"
    upscale: Boolean = Field(default=False, description="Let 'fit' and 'fill' enlarge the image.")

    @model_validator(mode="after")
    def _sides(self) -> Resize:
        if self.width is None and self.height is None:
            raise ValueError("give width, height or both")
        if self.fit != "fit" and (self.width is None or self.height is None):
            raise ValueError(f"fit={self.fit!r} needs both width and height")
        return self


class ImageTransformPayload(MediaPayload):
    """Operations on one image."""

    resize: Resize | None = None
    auto_orient: Boolean = Field(default=True, description="Apply the EXIF orientation.")
    strip_metadata: Boolean = Field(default=True, description="Drop EXIF, XMP, ICC and comments.")
    format: ImageFormat | None = Field(default=None, description="None keeps jpeg/png/webp.")
    quality: Integer = Field(default=85, ge=1, le=100)


class ImageResult(Result):
    """One image written to the artifact store."""

    output_uri: str
    width: int
    height: int
    format: ImageFormat
    bytes: int
    deduplicated: bool = Field(default=False, description="Answered from an earlier run.")


class Box(Payload):
    """A bounding box for a thumbnail."""

    width: Integer = Field(ge=1, le=4096)
    height: Integer = Field(ge=1, le=4096)


class ThumbnailPayload(MediaPayload):
    """Several thumbnails of one image from a single decode."""

    sizes: list[Box] = Field(min_length=1, max_length=10)
    format: ImageFormat = "jpeg"
    quality: Integer = Field(default=85, ge=1, le=100)


class ThumbnailResult(Result):
    """The thumbnails, in the order of the sizes asked for."""

    thumbnails: list[ImageResult]
    deduplicated: bool = False


class VideoInfoResult(Result):
    """What a video is."""

    duration: float = Field(description="Seconds.")
    width: int
    height: int
    video_codec: str
    audio_codec: str | None
    fps: float | None
    bit_rate: int | None
    format_name: str
    bytes: int


class ContactSheet(Payload):
    """Frames evenly spread over the video, tiled into one image."""

    columns: Integer = Field(default=4, ge=1, le=10)
    rows: Integer = Field(default=4, ge=1, le=10)
    tile_width: Integer = Field(default=320, ge=32, le=1920)


class VideoThumbnailPayload(MediaPayload):
    """A frame at a time offset, or a contact sheet."""

    # The schema of _one_kind.
    model_config = ConfigDict(
        json_schema_extra={
            "not": {
                "required": ["offset", "contact_sheet"],
                "properties": {"offset": {"type": "number"}, "contact_sheet": {"type": "object"}},
            }
        }
    )

    offset: Number | None = Field(default=None, ge=0, description="Seconds; default: 10 % in.")
    contact_sheet: ContactSheet | None = None
    max_width: Integer = Field(default=640, ge=16, le=3840)
    quality: Integer = Field(default=85, ge=1, le=100)

    @model_validator(mode="after")
    def _one_kind(self) -> VideoThumbnailPayload:
        if self.offset is not None and self.contact_sheet is not None:
            raise ValueError("give offset or contact_sheet, not both")
        return self


class VideoImageResult(Result):
    """A still image taken from a video."""

    output_uri: str
    width: int
    height: int
    bytes: int
    duration: float = Field(description="Seconds, of the source video.")
    deduplicated: bool = False


class TranscodePayload(MediaPayload):
    """H.264/AAC MP4 at a target height and bit rate."""

    height: Integer = Field(default=720, ge=72, le=2160, description="Never upscaled.")
    video_bit_rate: Integer = Field(default=2_500_000, ge=100_000, le=50_000_000)
    audio_bit_rate: Integer = Field(default=128_000, ge=32_000, le=512_000)


class TranscodeResult(Result):
    """The transcoded video."""

    output_uri: str
    duration: float
    width: int
    height: int
    video_codec: str
    audio_codec: str | None
    bytes: int
    deduplicated: bool = False


MEDIA_RETRY = RetryPolicy(
    retry_on=(TransientError, ConnectionError, TimeoutError),
    max_retries=3,
    backoff_base=2.0,
    backoff_max=60.0,
)

TRANSFORM_IMAGE: TaskContract[ImageTransformPayload, ImageResult] = TaskContract(
    name="media.image.transform",
    queue="media.image",
    payload=ImageTransformPayload,
    result=ImageResult,
    description="Resize, orient, strip and convert one image into the artifact store.",
    retry=MEDIA_RETRY,
    soft_time_limit=60.0,
    time_limit=90.0,
    idempotency_key=("idempotency_key",),
    priority=5,
)

THUMBNAIL_IMAGE: TaskContract[ThumbnailPayload, ThumbnailResult] = TaskContract(
    name="media.image.thumbnail",
    queue="media.image",
    payload=ThumbnailPayload,
    result=ThumbnailResult,
    description="Several thumbnails of one image, from one decode.",
    retry=MEDIA_RETRY,
    soft_time_limit=60.0,
    time_limit=90.0,
    idempotency_key=("idempotency_key",),
    priority=5,
)

PROBE_VIDEO: TaskContract[MediaPayload, VideoInfoResult] = TaskContract(
    name="media.video.probe",
    queue="media.video",
    payload=MediaPayload,
    result=VideoInfoResult,
    description="Duration, codecs, dimensions and container of a video.",
    retry=MEDIA_RETRY,
    soft_time_limit=120.0,
    time_limit=150.0,
    priority=5,
)

THUMBNAIL_VIDEO: TaskContract[VideoThumbnailPayload, VideoImageResult] = TaskContract(
    name="media.video.thumbnail",
    queue="media.video",
    payload=VideoThumbnailPayload,
    result=VideoImageResult,
    description="A JPEG frame at an offset, or a contact sheet, of a video.",
    retry=MEDIA_RETRY,
    soft_time_limit=300.0,
    time_limit=330.0,
    idempotency_key=("idempotency_key",),
    priority=4,
)

TRANSCODE_VIDEO: TaskContract[TranscodePayload, TranscodeResult] = TaskContract(
    name="media.video.transcode",
    queue="media.video",
    payload=TranscodePayload,
    result=TranscodeResult,
    description="Transcode a video to H.264/AAC MP4 at a target height and bit rate.",
    retry=MEDIA_RETRY,
    soft_time_limit=3600.0,
    time_limit=3660.0,
    idempotency_key=("idempotency_key",),
    priority=3,
)
