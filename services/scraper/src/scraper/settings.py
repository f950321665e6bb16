"""Scraper settings: identity, politeness, limits and the SSRF allow-list."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasklane.net.guard import NetGuardPolicy
from tasklane.settings import checked_by


class ScraperSettings(BaseSettings):
    """Read from ``TASKLANE_SCRAPER_*``."""

    model_config = SettingsConfigDict(env_prefix="TASKLANE_SCRAPER_", extra="ignore", frozen=True)

    user_agent: str = Field(
        default="TasklaneBot/0.1 (+https://example.org/tasklane-bot)",
        min_length=3,
        description="Sent with every request and matched against robots.txt groups.",
    )
    allow: Annotated[str, checked_by(NetGuardPolicy.from_setting)] = Field(
        default="",
        description=(
            "Comma-separated networks and host names that may be fetched although private "
            "(e.g. '10.20.0.0/16,intranet.example'); every other private address is refused."
        ),
    )
    min_delay: float = Field(
        default=1.0, ge=0, description="Seconds between request starts to one host, all workers."
    )
    max_concurrency: int = Field(
        default=2, ge=1, description="Requests in flight to one host across all workers."
    )
    max_wait: float = Field(
        default=5.0,
        ge=0,
        description="Seconds a task waits for its host's turn before it retries later instead.",
    )
    robots_ttl: int = Field(default=3600, ge=60, description="Seconds robots.txt is cached.")
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=10.0, gt=0)
    max_redirects: int = Field(default=5, ge=0, le=20)
    crawl_concurrency: int = Field(
        default=16,
        ge=1,
        le=256,
        description="Pages of one crawl batch fetched at once by one worker process (threads).",
    )
    crawl_batch: int = Field(
        default=16,
        ge=1,
        le=200,
        description="URLs per crawl fetch task; at most crawl_concurrency is useful.",
    )
