"""Contracts of the scraper service."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field, model_validator

from tasklane.contracts.base import Payload, Result, RetryPolicy, TaskContract
from tasklane.contracts.fields import END, Boolean, Integer, Matches, Number, WebUrl
from tasklane.errors import TransientError

MAX_PAGE_BYTES = 50 * 1024 * 1024


def _present(name: str) -> dict[str, Any]:
    """Schema of an object whose ``name`` is there and is a string (not null)."""
    return {"required": [name], "properties": {name: {"type": "string"}}}


class FieldSelector(Payload):
    """Where one named field is found in a page: a CSS or an XPath selector, exactly one."""

    # The schema of _one_selector.
    model_config = ConfigDict(json_schema_extra={"oneOf": [_present("css"), _present("xpath")]})

    css: str | None = Field(default=None, min_length=1, max_length=500)
    xpath: str | None = Field(default=None, min_length=1, max_length=500)
    attribute: str | None = Field(
        default=None, max_length=100, description="Take this attribute instead of the text."
    )
    many: Boolean = Field(default=False, description="Every match as a list, not the first one.")

    @model_validator(mode="after")
    def _one_selector(self) -> FieldSelector:
        if (self.css is None) == (self.xpath is None):
            raise ValueError("give exactly one of css or xpath")
        return self


class FetchPayload(Payload):
    """One page to fetch and extract from."""

    url: WebUrl
    headers: dict[str, str] = Field(default_factory=dict, max_length=20)
    selectors: dict[str, FieldSelector] = Field(default_factory=dict, max_length=50)
    max_bytes: Integer = Field(default=5 * 1024 * 1024, gt=0, le=MAX_PAGE_BYTES)
    timeout: Number = Field(default=15.0, gt=0, le=120, description="Seconds for the whole fetch.")


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


# --- Crawls -----------------------------------------------------------------------------------
# A crawl runs level by level (breadth first): the seeds are level 0, the new links found on
# level n are level n + 1. Each level is claimed atomically against the crawl's visited set and
# its page budget, then fanned out as ``scraper.crawl.fetch`` batches on the fetch queue; the
# last batch of a level to finish asks the crawl-control queue for the next level. Level by level
# is what makes the bounds exact: a page is always reached at its shortest depth.

CRAWL_ID_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,99}}{END}"
BATCH_ID_PATTERN = rf"^[0-9A-Za-z_.-]{{1,200}}{END}"
CrawlId = Annotated[str, Matches(CRAWL_ID_PATTERN, "not a crawl id")]
MAX_CRAWL_PAGES = 100_000
MAX_CRAWL_DEPTH = 20
MAX_BATCH_URLS = 200


class CrawlPayload(Payload):
    """Where a crawl starts, where it may go and how far."""

    seeds: list[WebUrl] = Field(min_length=1, max_length=100)
    allowed_domains: list[str] = Field(
        default_factory=list,
        max_length=100,
        description=(
            "Host names the crawl may follow links to (sub-domains included); "
            "empty means the seeds' hosts."
        ),
    )
    max_pages: Integer = Field(default=100, ge=1, le=MAX_CRAWL_PAGES)
    max_depth: Integer = Field(default=2, ge=0, le=MAX_CRAWL_DEPTH)
    selectors: dict[str, FieldSelector] = Field(default_factory=dict, max_length=50)
    max_bytes: Integer = Field(default=5 * 1024 * 1024, gt=0, le=MAX_PAGE_BYTES)
    timeout: Number = Field(default=15.0, gt=0, le=120, description="Seconds per page fetch.")
    crawl_id: CrawlId | None = Field(
        default=None,
        description="Chosen by the caller to make the request idempotent; else the task id.",
    )
    build_report: Boolean = Field(
        default=False, description="Publish scraper.report.build when the crawl completes."
    )


class CrawlStatus(Result):
    """Where a crawl stands; the answer of ``scraper.site.crawl`` and ``scraper.crawl.status``."""

    crawl_id: str
    state: str = Field(description="running, finishing or completed.")
    level: int = Field(description="Depth being fetched now (the last one once completed).")
    max_pages: int
    max_depth: int
    queued: int = Field(description="URLs claimed so far (never more than max_pages).")
    fetched: int = Field(description="Pages fetched, whatever their HTTP status.")
    failed: int = Field(description="URLs that could not be fetched (refused, failed, dead).")
    pending_batches: int = Field(description="Fetch batches of the current level not finished.")
    out_of_bounds: int = Field(description="New links left out by max_pages or max_depth.")
    started_at: str
    finished_at: str | None = None
    data_uri: str | None = Field(default=None, description="pages.jsonl in the artifact store.")


class CrawlRef(Payload):
    """Names one crawl."""

    crawl_id: CrawlId


class AdvancePayload(CrawlRef):
    """Claim and fan out one level of a crawl (sent by the crawl itself)."""

    level: Integer = Field(ge=0, le=MAX_CRAWL_DEPTH + 1)


class AdvanceResult(Result):
    """What one level of a crawl became."""

    crawl_id: str
    level: int
    urls: int
    batches: int
    state: str


class CrawlURL(Payload):
    """One URL of a fetch batch and how many attempts it has had."""

    url: str = Field(min_length=1, max_length=4096)
    attempt: Integer = Field(default=0, ge=0)


class CrawlBatchPayload(CrawlRef):
    """A batch of URLs of one crawl level (sent by the crawl itself)."""

    batch_id: Annotated[str, Matches(BATCH_ID_PATTERN, "not a batch id")]
    level: Integer = Field(ge=0, le=MAX_CRAWL_DEPTH)
    urls: list[CrawlURL] = Field(min_length=1, max_length=MAX_BATCH_URLS)


class CrawlBatchResult(Result):
    """What a batch did."""

    crawl_id: str
    batch_id: str
    fetched: int
    failed: int
    retried: int = Field(description="URLs sent back for a later attempt (transient errors).")
    skipped: int = Field(description="URLs already recorded by an earlier delivery.")
    discovered: int = Field(description="Distinct in-bounds links offered to the next level.")
    deduplicated: bool = False


class ReportPayload(Payload):
    """Build the report of a completed crawl."""

    crawl_id: CrawlId
    top: Integer = Field(default=10, ge=1, le=1000, description="Length of the top-N tables.")


class LinkCount(Result):
    """A page and how many crawled pages link to it."""

    url: str
    inlinks: int


class ReportResult(Result):
    """Where the report is and its headline figures."""

    crawl_id: str
    csv_uri: str
    json_uri: str
    html_uri: str
    pages: int
    fetched: int
    failed: int
    by_status: dict[str, int]
    by_content_type: dict[str, int]
    response_ms: dict[str, float] = Field(description="p50, p90, p95, p99, max and mean.")
    most_linked: list[LinkCount]


CRAWL_SITE: TaskContract[CrawlPayload, CrawlStatus] = TaskContract(
    name="scraper.site.crawl",
    queue="scraper.crawl",
    payload=CrawlPayload,
    result=CrawlStatus,
    description="Start a bounded, polite crawl; pages are fetched as batches on scraper.fetch.",
    retry=FETCH_RETRY,
    soft_time_limit=60.0,
    time_limit=90.0,
    idempotency_key=("crawl_id",),
    priority=5,
)

CRAWL_STATUS: TaskContract[CrawlRef, CrawlStatus] = TaskContract(
    name="scraper.crawl.status",
    queue="scraper.crawl",
    payload=CrawlRef,
    result=CrawlStatus,
    description="Where a crawl stands, while it runs and after it completed.",
    retry=FETCH_RETRY,
    soft_time_limit=10.0,
    time_limit=20.0,
    priority=7,
)

CRAWL_ADVANCE: TaskContract[AdvancePayload, AdvanceResult] = TaskContract(
    name="scraper.crawl.advance",
    queue="scraper.crawl",
    payload=AdvancePayload,
    result=AdvanceResult,
    description="Claim the next level of a crawl and fan it out, or complete the crawl.",
    retry=FETCH_RETRY,
    soft_time_limit=120.0,
    time_limit=150.0,
    idempotency_key=("crawl_id", "level"),
    priority=6,
)

CRAWL_FETCH: TaskContract[CrawlBatchPayload, CrawlBatchResult] = TaskContract(
    name="scraper.crawl.fetch",
    queue="scraper.fetch",
    payload=CrawlBatchPayload,
    result=CrawlBatchResult,
    description="Fetch one batch of a crawl's pages concurrently and record them.",
    retry=FETCH_RETRY,
    soft_time_limit=240.0,
    time_limit=270.0,
    idempotency_key=("crawl_id", "batch_id"),
    priority=3,
)

BUILD_REPORT: TaskContract[ReportPayload, ReportResult] = TaskContract(
    name="scraper.report.build",
    queue="scraper.reports",
    payload=ReportPayload,
    result=ReportResult,
    description="Analyse a completed crawl into CSV, JSON and a self-contained HTML report.",
    retry=FETCH_RETRY,
    soft_time_limit=300.0,
    time_limit=360.0,
    priority=2,
)
