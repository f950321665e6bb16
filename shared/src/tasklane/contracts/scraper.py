"""Contracts of the scraper service."""

from __future__ import annotations

from pydantic import Field, HttpUrl, model_validator

from tasklane.contracts.base import Payload, Result, RetryPolicy, TaskContract
from tasklane.errors import TransientError

MAX_PAGE_BYTES = 50 * 1024 * 1024


class FieldSelector(Payload):
    """Where one named field is found in a page: a CSS or an XPath selector, exactly one."""

    css: str | None = Field(default=None, min_length=1, max_length=500)
    xpath: str | None = Field(default=None, min_length=1, max_length=500)
    attribute: str | None = Field(
        default=None, max_length=100, description="Take this attribute instead of the text."
    )
    many: bool = Field(default=False, description="Every match as a list, not the first one.")

    @model_validator(mode="after")
    def _one_selector(self) -> FieldSelector:
        if (self.css is None) == (self.xpath is None):
            raise ValueError("give exactly one of css or xpath")
        return self


class FetchPayload(Payload):
    """One page to fetch and extract from."""

    url: HttpUrl
    headers: dict[str, str] = Field(default_factory=dict, max_length=20)
    selectors: dict[str, FieldSelector] = Field(default_factory=dict, max_length=50)
    max_bytes: int = Field(default=5 * 1024 * 1024, gt=0, le=MAX_PAGE_BYTES)
    timeout: float = Field(default=15.0, gt=0, le=120, description="Seconds for the whole fetch.")


class FetchResult(Result):
    """What the page was and what was extracted from it."""

    url: str
    final_url: str = Field(description="The URL after redirects.")
    status: int
    content_type: str
    title: str | None
    text_excerpt: str
    links: list[str]
    fields: dict[str, str | list[str] | None]
    bytes: int = Field(description="Body bytes read from the network.")
    elapsed_ms: float


FETCH_RETRY = RetryPolicy(
    retry_on=(TransientError, ConnectionError, TimeoutError),
    max_retries=4,
    backoff_base=2.0,
    backoff_max=120.0,
)

FETCH_PAGE: TaskContract[FetchPayload, FetchResult] = TaskContract(
    name="scraper.page.fetch",
    queue="scraper.fetch",
    payload=FetchPayload,
    result=FetchResult,
    description="Fetch one page politely through the SSRF guard and extract named fields.",
    retry=FETCH_RETRY,
    soft_time_limit=150.0,
    time_limit=180.0,
    priority=4,
)
