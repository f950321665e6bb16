"""Thin task functions: payload in, domain calls, result out.

``scraper.page.fetch`` retries transient failures (timeouts, connection errors, 5xx, 429 with
``Retry-After`` honoured, host busy under the politeness limits) with backoff and jitter; robots.txt
refusals, SSRF refusals, oversize pages and unsupported content types are dead-lettered at once.
Fetching is read-only, so the task has no idempotency key: a redelivery simply fetches again.
"""

from __future__ import annotations

from functools import cache
from urllib.parse import urlsplit

import httpx
import redis

from scraper.app import app
from scraper.extract import extract
from scraper.fetch import FetchLimits, fetch, make_client
from scraper.politeness import DomainGate
from scraper.robots import RobotsCache
from scraper.settings import ScraperSettings
from tasklane.contracts.scraper import FETCH_PAGE, FetchPayload, FetchResult
from tasklane.errors import TransientError
from tasklane.netguard import NetGuardPolicy
from tasklane.settings import load
from tasklane.task import implement

settings = app.conf.tasklane_settings
# Read when the worker starts, so that a bad value stops it with a clear error at once.
scraper_settings = load(ScraperSettings)
policy = NetGuardPolicy.from_setting(scraper_settings.allow)
base_limits = FetchLimits(
    connect_timeout=scraper_settings.connect_timeout,
    read_timeout=scraper_settings.read_timeout,
    max_redirects=scraper_settings.max_redirects,
)


@cache
def _redis() -> redis.Redis:
    # One client per worker process, created after the pool forks.
    return redis.Redis.from_url(settings.require_state())


@cache
def _http() -> httpx.Client:
    return make_client(policy, base_limits)


@cache
def _robots() -> RobotsCache:
    return RobotsCache(
        _redis(),
        _http(),
        user_agent=scraper_settings.user_agent,
        prefix=settings.namespace,
        ttl=scraper_settings.robots_ttl,
    )


@cache
def _gate() -> DomainGate:
    return DomainGate(
        _redis(),
        prefix=settings.namespace,
        min_delay=scraper_settings.min_delay,
        max_concurrency=scraper_settings.max_concurrency,
        lease_seconds=FETCH_PAGE.time_limit,
    )


@implement(app, FETCH_PAGE, settings)
def fetch_page(payload: FetchPayload) -> FetchResult:
    """Fetch one page politely and extract its fields. Retries transient errors; no idempotency."""
    url = str(payload.url)
    robots = _robots()
    robots.check(url)
    host = urlsplit(url).hostname or ""
    limits = FetchLimits(
        max_bytes=payload.max_bytes,
        connect_timeout=base_limits.connect_timeout,
        read_timeout=base_limits.read_timeout,
        total_timeout=payload.timeout,
        max_redirects=base_limits.max_redirects,
    )
    gate = _gate()
    with gate.acquire(host, max_wait=scraper_settings.max_wait, min_delay=robots.crawl_delay(url)):
        try:
            page = fetch(
                _http(),
                url,
                headers=payload.headers,
                limits=limits,
                user_agent=scraper_settings.user_agent,
            )
        except TransientError as exc:
            if exc.retry_after:
                # Every worker backs off from this host, not only the one that was told to.
                gate.defer(host, exc.retry_after)
            raise
    found = extract(
        page.body,
        encoding=page.encoding,
        content_type=page.content_type,
        base_url=page.final_url,
        selectors=payload.selectors,
    )
    return FetchResult(
        url=url,
        final_url=page.final_url,
        status=page.status,
        content_type=page.content_type,
        title=found.title,
        text_excerpt=found.text_excerpt,
        links=found.links,
        fields=found.fields,
        bytes=page.wire_bytes,
        elapsed_ms=page.elapsed_ms,
    )
