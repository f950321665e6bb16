"""Media settings: input limits, remote sources and where temporary files go."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasklane.net.guard import NetGuardPolicy
from tasklane.settings import checked_by


class MediaSettings(BaseSettings):
    """Read from ``TASKLANE_MEDIA_*``."""

    model_config = SettingsConfigDict(env_prefix="TASKLANE_MEDIA_", extra="ignore", frozen=True)

    allow: Annotated[str, checked_by(NetGuardPolicy.from_setting)] = Field(
        default="",
        description=(
            "Comma-separated networks and host names remote sources may come from although "
            "private; every other private address is refused."
        ),
    )
    max_image_bytes: int = Field(default=50 * 1024 * 1024, gt=0, description="Image input cap.")
    max_image_pixels: int = Field(
        default=50_000_000, gt=0, description="Width x height of an image input (bomb guard)."
    )
    max_video_bytes: int = Field(default=2 * 1024**3, gt=0, description="Video input cap.")
    max_video_seconds: float = Field(default=3 * 3600.0, gt=0, description="Video duration cap.")
    max_video_pixels: int = Field(default=3840 * 2160, gt=0, description="Video frame size cap.")
    fetch_timeout: float = Field(
        default=30.0, gt=0, description="Seconds of network silence allowed for remote sources."
    )
    work_dir: Path | None = Field(
        default=None,
        description="Where per-task temporary files go (default: the system's temp directory).",
    )
