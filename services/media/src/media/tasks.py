"""Thin task functions: payload in, source fetched, domain call, output stored, result out.

Every task works in a temporary directory of its own, removed when the task ends, whether it
succeeds, fails, or is stopped by its soft time limit. Limits (bombs, corrupt or unsupported
files, oversize inputs, overlong videos) raise permanent errors: dead-lettered, never retried.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path

import httpx
from celery import current_task

from media import images, observe, video
from media.app import app
from media.settings import MediaSettings
from media.soft_limit import soft_limit_watch
from media.sources import Source, fetch_source, output_key
from media.workspace import in_workspace
from tasklane.artifacts import ArtifactStore, open_store
from tasklane.contracts.media import (
    PROBE_VIDEO,
    THUMBNAIL_IMAGE,
    THUMBNAIL_VIDEO,
    TRANSCODE_VIDEO,
    TRANSFORM_IMAGE,
    ImageResult,
    ImageTransformPayload,
    MediaPayload,
    ThumbnailPayload,
    ThumbnailResult,
    TranscodePayload,
    TranscodeResult,
    VideoImageResult,
    VideoInfoResult,
    VideoThumbnailPayload,
)
from tasklane.net.guard import NetGuardPolicy, guarded_client
from tasklane.settings import load

settings = app.settings
# Read when the worker starts, so that a bad value stops it with a clear error at once.
media_settings = load(MediaSettings)
policy = NetGuardPolicy.from_setting(media_settings.allow)
image_limits = images.ImageLimits(
    max_bytes=media_settings.max_image_bytes,
    max_pixels=media_settings.max_image_pixels,
    max_output_pixels=media_settings.max_image_pixels,
)
video_limits = video.VideoLimits(
    max_bytes=media_settings.max_video_bytes,
    max_duration=media_settings.max_video_seconds,
    max_pixels=media_settings.max_video_pixels,
)
#: Where a video thumbnail is taken when the payload gives no offset: this far into the video.
DEFAULT_OFFSET_SHARE = 0.1


# One of each per worker process, created lazily after the pool forks.
@cache
def _store() -> ArtifactStore:
    return open_store(settings.require_artifacts())


@cache
def _http() -> httpx.Client:
    return guarded_client(policy, timeout=media_settings.fetch_timeout, max_redirects=5)


def _fetch(payload: MediaPayload, work: Path, max_bytes: int) -> Source:
    source = fetch_source(
        payload.source, work / "source", store=_store(), http=_http(), max_bytes=max_bytes
    )
    observe.bytes_moved("in", source.bytes)
    return source


def _options(payload: MediaPayload) -> str:
    # The key of an output depends on what is asked, not on who asks or under which key.
    return json.dumps(payload.model_dump(exclude={"source", "idempotency_key"}), sort_keys=True)


def _put_image(task: str, source: Source, options: str, output: images.ImageOutput) -> ImageResult:
    key = output_key(
        task, source, options, f".{'jpg' if output.format == 'jpeg' else output.format}"
    )
    uri = _store().put(key, output.data, content_type=output.media_type)
    observe.bytes_moved("out", len(output.data))
    return ImageResult(
        output_uri=uri,
        width=output.width,
        height=output.height,
        format=output.format,
        bytes=len(output.data),
    )


@app.implement(TRANSFORM_IMAGE)
def transform_image(payload: ImageTransformPayload) -> ImageResult:
    """Resize, orient, strip and convert one image."""
    resize = payload.resize
    operations = images.Operations(
        resize=images.Resize(
            width=resize.width, height=resize.height, fit=resize.fit, upscale=resize.upscale
        )
        if resize
        else None,
        auto_orient=payload.auto_orient,
        strip_metadata=payload.strip_metadata,
        format=payload.format,
        quality=payload.quality,
    )

    def run(work: Path) -> ImageResult:
        source = _fetch(payload, work, image_limits.max_bytes)
        output = images.transform(source.path, operations, image_limits)
        return _put_image(TRANSFORM_IMAGE.name, source, _options(payload), output)

    with observe.measured(TRANSFORM_IMAGE.name):
        return in_workspace(media_settings.work_dir, run)


@app.implement(THUMBNAIL_IMAGE)
def thumbnail_image(payload: ThumbnailPayload) -> ThumbnailResult:
    """Several thumbnails of one image, from one decode."""
    sizes = [(box.width, box.height) for box in payload.sizes]

    def run(work: Path) -> ThumbnailResult:
        source = _fetch(payload, work, image_limits.max_bytes)
        outputs = images.thumbnails(
            source.path, sizes, format=payload.format, quality=payload.quality, limits=image_limits
        )
        options = _options(payload)
        return ThumbnailResult(
            thumbnails=[
                _put_image(THUMBNAIL_IMAGE.name, source, f"{options}#{index}", output)
                for index, output in enumerate(outputs)
            ]
        )

    with observe.measured(THUMBNAIL_IMAGE.name):
        return in_workspace(media_settings.work_dir, run)


@app.implement(PROBE_VIDEO)
def probe_video(payload: MediaPayload) -> VideoInfoResult:
    """Duration, codecs, dimensions and container of a video."""

    def run(work: Path) -> VideoInfoResult:
        source = _fetch(payload, work, video_limits.max_bytes)
        info = video.probe(source.path, video_limits)
        return VideoInfoResult(
            duration=info.duration,
            width=info.width,
            height=info.height,
            video_codec=info.video_codec,
            audio_codec=info.audio_codec,
            fps=info.fps,
            bit_rate=info.bit_rate,
            format_name=info.format_name,
            bytes=source.bytes,
        )

    with observe.measured(PROBE_VIDEO.name):
        return in_workspace(media_settings.work_dir, run)


@app.implement(THUMBNAIL_VIDEO)
def thumbnail_video(payload: VideoThumbnailPayload) -> VideoImageResult:
    """A JPEG frame at an offset, or a contact sheet."""

    def run(work: Path) -> VideoImageResult:
        source = _fetch(payload, work, video_limits.max_bytes)
        info = video.probe(source.path, video_limits)
        sheet = payload.contact_sheet
        if sheet is not None:
            still = video.contact_sheet(
                source.path,
                columns=sheet.columns,
                rows=sheet.rows,
                tile_width=sheet.tile_width,
                quality=payload.quality,
                limits=video_limits,
            )
        else:
            offset = (
                info.duration * DEFAULT_OFFSET_SHARE if payload.offset is None else payload.offset
            )
            still = video.thumbnail(
                source.path,
                offset,
                max_width=payload.max_width,
                quality=payload.quality,
                limits=video_limits,
            )
        key = output_key(THUMBNAIL_VIDEO.name, source, _options(payload), ".jpg")
        uri = _store().put(key, still.data, content_type=still.media_type)
        observe.bytes_moved("out", len(still.data))
        return VideoImageResult(
            output_uri=uri,
            width=still.width,
            height=still.height,
            bytes=len(still.data),
            duration=info.duration,
        )

    with observe.measured(THUMBNAIL_VIDEO.name):
        return in_workspace(media_settings.work_dir, run)


def _soft_limit_watch() -> Callable[[], bool]:
    """The per-frame check of this run's soft limit: the message's own, else the contract's."""
    request = current_task.request if current_task else None
    limits = getattr(request, "timelimit", None) or (None, None)
    soft = limits[1] if len(limits) > 1 and limits[1] else TRANSCODE_VIDEO.soft_time_limit
    return soft_limit_watch(soft)


@app.implement(TRANSCODE_VIDEO)
def transcode_video(payload: TranscodePayload) -> TranscodeResult:
    """H.264/AAC MP4 at a target height; stopped (temporary files removed) by the soft limit."""

    def run(work: Path) -> TranscodeResult:
        source = _fetch(payload, work, video_limits.max_bytes)
        target = work / "output.mp4"
        info = video.transcode(
            source.path,
            target,
            height=payload.height,
            video_bit_rate=payload.video_bit_rate,
            audio_bit_rate=payload.audio_bit_rate,
            limits=video_limits,
            should_stop=_soft_limit_watch(),
        )
        key = output_key(TRANSCODE_VIDEO.name, source, _options(payload), ".mp4")
        uri = _store().put_file(key, target, content_type="video/mp4")
        observe.bytes_moved("out", target.stat().st_size)
        return TranscodeResult(
            output_uri=uri,
            duration=info.duration,
            width=info.width,
            height=info.height,
            video_codec=info.video_codec,
            audio_codec=info.audio_codec,
            bytes=target.stat().st_size,
        )

    with observe.measured(TRANSCODE_VIDEO.name):
        return in_workspace(media_settings.work_dir, run)
