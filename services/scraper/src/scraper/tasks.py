"""Thin task functions: payload in, domain calls, result out.

``scraper.page.fetch`` retries transient failures and dead-letters refusals at once; crawls run
level by level (see :mod:`scraper.crawlstate` for the accounting).
Design: docs/scraper.md#one-page, docs/scraper.md#crawls.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from urllib.parse import urldefrag, urlsplit

import httpx
import redis
from celery import current_task

from scraper import observe
from scraper.app import app
from scraper.crawl import normalise_domains, refusal_type, run_batch
from scraper.crawlstate import (
    CrawlSpec,
    CrawlStore,
    decode_pages,
    encode_pages,
    retry_batch_id,
)
from scraper.fetch import FetchLimits, make_client
from scraper.page import PageFetcher
from scraper.politeness import DomainGate
from scraper.records import now_iso
from scraper.report import build_report
from scraper.robots import RobotsCache
from scraper.settings import ScraperSettings
from tasklane.artifacts import ArtifactNotFoundError, ArtifactStore, open_store
from tasklane.contracts.scraper import (
    BUILD_REPORT,
    CRAWL_ADVANCE,
    CRAWL_FETCH,
    CRAWL_SITE,
    CRAWL_STATUS,
    FETCH_PAGE,
    AdvancePayload,
    AdvanceResult,
    CrawlBatchPayload,
    CrawlBatchResult,
    CrawlPayload,
    CrawlRef,
    CrawlStatus,
    CrawlURL,
    FetchPayload,
    FetchResult,
    ReportPayload,
    ReportResult,
)
from tasklane.errors import TransientError
from tasklane.net.guard import NetGuardPolicy
from tasklane.publish import Publisher
from tasklane.settings import load
from tasklane.wire.broker import redis_client

logger = logging.getLogger(__name__)

settings = app.settings
# Read when the worker starts, so that a bad value stops it with a clear error at once.
scraper_settings = load(ScraperSettings)
policy = NetGuardPolicy.from_setting(scraper_settings.allow)
base_limits = FetchLimits(
    connect_timeout=scraper_settings.connect_timeout,
    read_timeout=scraper_settings.read_timeout,
    max_redirects=scraper_settings.max_redirects,
)
#: Seconds a batch keeps for recording and publishing after its last fetch.
BATCH_MARGIN = 15.0
REPORT_TYPES = {"csv": "text/csv", "json": "application/json", "html": "text/html"}


# One of each per worker process, created lazily after the pool forks.
@cache
def _redis() -> redis.Redis:
    return redis_client(settings.require_state(), settings)


@cache
def _http() -> httpx.Client:
    return make_client(policy, base_limits)


@cache
def _fetcher() -> PageFetcher:
    gate = DomainGate(
        _redis(),
        prefix=settings.namespace,
        min_delay=scraper_settings.min_delay,
        max_concurrency=scraper_settings.max_concurrency,
        lease_seconds=CRAWL_FETCH.time_limit,
    )
    robots = RobotsCache(
        _redis(),
        _http(),
        user_agent=scraper_settings.user_agent,
        prefix=settings.namespace,
        ttl=scraper_settings.robots_ttl,
        gate=gate,  # a robots.txt request takes its host's turn like any other
    )
    return PageFetcher(
        http=_http(),
        robots=robots,
        gate=gate,
        user_agent=scraper_settings.user_agent,
        limits=base_limits,
        max_wait=scraper_settings.max_wait,
    )


@cache
def _crawls() -> CrawlStore:
    return CrawlStore(_redis(), namespace=settings.namespace, ttl=settings.idempotency_ttl)


@cache
def _executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(scraper_settings.crawl_concurrency, thread_name_prefix="crawl")


@cache
def _publisher() -> Publisher:
    return Publisher(settings)


@cache
def _artifacts() -> ArtifactStore:
    return open_store(settings.require_artifacts())


@app.implement(FETCH_PAGE)
def fetch_page(payload: FetchPayload) -> FetchResult:
    """Fetch one page politely and extract its fields. Retries transient errors; no idempotency."""
    try:
        page = _fetcher().fetch(
            str(payload.url),
            headers=payload.headers,
            selectors=payload.selectors,
            max_bytes=payload.max_bytes,
            timeout=payload.timeout,
        )
    except Exception as exc:
        kind = refusal_type(exc)
        if kind is not None:
            observe.refusal(kind)
        raise
    observe.pages(page.status, page.bytes)
    return page


@app.implement(CRAWL_SITE)
def crawl_site(payload: CrawlPayload) -> CrawlStatus:
    """Record the crawl and fan out its seeds; the answer is its status right after."""
    crawl_id = payload.crawl_id or current_task.request.id
    seeds = sorted({urldefrag(str(seed)).url for seed in payload.seeds})
    domains = payload.allowed_domains or [urlsplit(seed).hostname or "" for seed in seeds]
    spec = CrawlSpec(
        allowed_domains=normalise_domains(domains),
        selectors=payload.selectors,
        max_bytes=payload.max_bytes,
        timeout=payload.timeout,
        batch_size=min(scraper_settings.crawl_batch, scraper_settings.crawl_concurrency),
        build_report=payload.build_report,
    )
    _crawls().create(
        crawl_id,
        spec,
        seeds=seeds,
        max_pages=payload.max_pages,
        max_depth=payload.max_depth,
        started_at=now_iso(),
    )
    _advance(crawl_id, 0)  # a redelivery claims nothing new and re-sends the same batches
    return _crawls().status(crawl_id)


@app.implement(CRAWL_STATUS)
def crawl_status(payload: CrawlRef) -> CrawlStatus:
    """Where the crawl stands."""
    return _crawls().status(payload.crawl_id)


@app.implement(CRAWL_ADVANCE)
def crawl_advance(payload: AdvancePayload) -> AdvanceResult:
    """Claim and fan out the next level, or complete the crawl when there is none."""
    return _advance(payload.crawl_id, payload.level)


def _advance(crawl_id: str, level: int) -> AdvanceResult:
    crawls = _crawls()
    spec = crawls.spec(crawl_id)
    claimed = crawls.advance(crawl_id, level, spec.batch_size)
    # A late redelivery of a completed crawl's start or advance has nothing left to send.
    batches = [] if claimed.state == "completed" else list(claimed.batches(spec.batch_size))
    for batch_id, urls in batches:
        _publisher().publish(
            CRAWL_FETCH,
            CrawlBatchPayload(
                crawl_id=crawl_id,
                batch_id=batch_id,
                level=level,
                urls=[CrawlURL(url=url) for url in urls],
            ),
        )
    state = claimed.state
    if not batches and state != "completed":
        state = _complete(crawl_id, spec)
    return AdvanceResult(
        crawl_id=crawl_id, level=level, urls=len(claimed.urls), batches=len(batches), state=state
    )


def _complete(crawl_id: str, spec: CrawlSpec) -> str:
    crawls = _crawls()
    store = _artifacts()
    data_uri = store.put(
        f"crawls/{crawl_id}/pages.jsonl",
        encode_pages(crawls.pages(crawl_id)),
        content_type="application/x-ndjson",
    )
    crawls.complete(crawl_id, data_uri=data_uri, finished_at=now_iso())
    status = crawls.status(crawl_id)
    store.put(
        f"crawls/{crawl_id}/crawl.json",
        status.model_dump_json(indent=2).encode(),
        content_type="application/json",
    )
    if spec.build_report:
        _publisher().publish(BUILD_REPORT, ReportPayload(crawl_id=crawl_id))
    return status.state


def _batch_dead_lettered(payload: CrawlBatchPayload, exc: Exception) -> None:
    """Account for a dead-lettered batch so that its crawl still completes."""
    end = _crawls().settle_dead_batch(
        payload.crawl_id,
        payload.batch_id,
        payload.level,
        payload.urls,
        f"dead-lettered: {type(exc).__name__}: {exc}",
    )
    if end.level_done(payload.level):
        _publisher().publish(
            CRAWL_ADVANCE, AdvancePayload(crawl_id=payload.crawl_id, level=payload.level + 1)
        )


@app.implement(CRAWL_FETCH, on_dead_letter=_batch_dead_lettered)
def crawl_fetch(payload: CrawlBatchPayload) -> CrawlBatchResult:
    """Fetch a batch concurrently, record it, schedule retries and maybe the next level."""
    crawls = _crawls()
    spec = crawls.spec(payload.crawl_id)
    recorded = crawls.recorded(payload.crawl_id, [item.url for item in payload.urls])
    todo = [item for item in payload.urls if item.url not in recorded]
    deadline = time.monotonic() + CRAWL_FETCH.soft_time_limit - BATCH_MARGIN
    outcome = run_batch(
        _fetcher(),
        _executor(),
        spec,
        level=payload.level,
        items=todo,
        retry=CRAWL_FETCH.retry,
        deadline=deadline,
    )
    observe.records(outcome.records)
    index = {item.url: position for position, item in enumerate(payload.urls)}
    retries = [(retry_batch_id(payload.batch_id, index[r.url]), r) for r in outcome.retries]
    fetched, failed, _ = crawls.record(
        payload.crawl_id,
        payload.level,
        outcome.records,
        links=outcome.links,
        redirected=outcome.redirected,
        retry_batches=[batch_id for batch_id, _ in retries],
    )
    for batch_id, retry in retries:
        _publisher().publish(
            CRAWL_FETCH,
            CrawlBatchPayload(
                crawl_id=payload.crawl_id,
                batch_id=batch_id,
                level=payload.level,
                urls=[CrawlURL(url=retry.url, attempt=retry.attempt)],
            ),
            countdown=retry.delay,
        )
    end = crawls.finish_batch(payload.crawl_id, payload.batch_id)
    if end.level_done(payload.level):
        _publisher().publish(
            CRAWL_ADVANCE, AdvancePayload(crawl_id=payload.crawl_id, level=payload.level + 1)
        )
    return CrawlBatchResult(
        crawl_id=payload.crawl_id,
        batch_id=payload.batch_id,
        fetched=fetched,
        failed=failed,
        retried=len(retries),
        skipped=len(recorded),
        discovered=len(outcome.links),
    )


@app.implement(BUILD_REPORT)
def build_crawl_report(payload: ReportPayload) -> ReportResult:
    """Analyse a completed crawl into CSV, JSON and HTML in the artifact store."""
    store = _artifacts()
    crawl_id = payload.crawl_id
    try:
        status = CrawlStatus.model_validate_json(
            store.get(store.uri(f"crawls/{crawl_id}/crawl.json"))
        )
    except ArtifactNotFoundError:
        # A crawl still running is worth waiting for; an unknown one fails on the next line.
        state = _crawls().status(crawl_id).state
        raise TransientError(f"crawl {crawl_id!r} has not completed yet (state {state})") from None
    assert status.data_uri is not None
    pages = decode_pages(store.get(status.data_uri))
    analysis, files = build_report(
        pages,
        crawl_id=crawl_id,
        started_at=status.started_at,
        finished_at=status.finished_at,
        top=payload.top,
    )
    uris = {
        kind: store.put(
            f"reports/{crawl_id}/report.{kind}", files[kind], content_type=REPORT_TYPES[kind]
        )
        for kind in REPORT_TYPES
    }
    return ReportResult(
        crawl_id=crawl_id,
        csv_uri=uris["csv"],
        json_uri=uris["json"],
        html_uri=uris["html"],
        pages=analysis.pages,
        fetched=analysis.fetched,
        failed=analysis.failed,
        by_status=analysis.by_status,
        by_content_type=analysis.by_content_type,
        response_ms=analysis.response_ms,
        most_linked=analysis.most_linked,
    )
