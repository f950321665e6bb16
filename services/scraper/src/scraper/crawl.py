"""Fetch one batch of a crawl concurrently and turn every URL into a record or a retry.

Plain domain code: no Celery and no Redis here (the task records the outcome with
:class:`~scraper.crawlstate.CrawlStore`). A batch's pages are fetched by a thread pool over the
worker process's one guarded ``httpx.Client``: fetching waits on the network, which releases the
GIL, and the blocking fetch path is the one ``scraper.page.fetch`` uses, guard and caps included.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from urllib.parse import urldefrag, urlsplit

from scraper.crawlstate import CrawlSpec
from scraper.fetch import PageTooLargeError, TooManyRedirectsError, UnsupportedContentTypeError
from scraper.page import PageFetcher
from scraper.records import PageRecord, failed_record, now_iso
from scraper.robots import RobotsDisallowedError
from tasklane.contracts.base import RetryPolicy
from tasklane.contracts.scraper import CrawlURL
from tasklane.errors import PermanentError
from tasklane.net.guard import UnsafeURLError

logger = logging.getLogger(__name__)

#: Why a URL could not be fetched, by the exception that said so (first match wins).
_ERROR_TYPES: tuple[tuple[type[Exception], str], ...] = (
    (RobotsDisallowedError, "robots-disallowed"),
    (UnsafeURLError, "unsafe-url"),
    (PageTooLargeError, "too-large"),
    (UnsupportedContentTypeError, "unsupported-type"),
    (TooManyRedirectsError, "too-many-redirects"),
    (PermanentError, "invalid"),
)


@dataclass(frozen=True)
class RetryLater:
    """A URL that failed transiently and gets another attempt after ``delay`` seconds."""

    url: str
    attempt: int
    delay: float
    error: str


@dataclass
class BatchOutcome:
    """Records of the URLs settled by this batch, the URLs to retry and what was found."""

    records: list[PageRecord] = field(default_factory=list)
    retries: list[RetryLater] = field(default_factory=list)
    links: set[str] = field(default_factory=set)
    redirected: set[str] = field(default_factory=set)


def refusal_type(exc: BaseException) -> str | None:
    """The short name of a non-retryable fetch failure (``robots-disallowed``, ...), or None."""
    return next((name for kind, name in _ERROR_TYPES if isinstance(exc, kind)), None)


def in_scope(url: str, allowed_domains: Iterable[str]) -> bool:
    """Whether ``url`` is http(s) on one of ``allowed_domains`` or a sub-domain of one."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    if parts.scheme not in ("http", "https") or not host:
        return False
    return any(host == domain or host.endswith("." + domain) for domain in allowed_domains)


def normalise_domains(domains: Iterable[str]) -> list[str]:
    """Lower-case host names without a trailing dot, de-duplicated, sorted."""
    return sorted({domain.strip().lower().rstrip(".") for domain in domains if domain.strip()})


def run_batch(
    fetcher: PageFetcher,
    executor: Executor,
    spec: CrawlSpec,
    *,
    level: int,
    items: Sequence[CrawlURL],
    retry: RetryPolicy,
    deadline: float,
) -> BatchOutcome:
    """Fetch ``items`` concurrently on ``executor``; never raises for a single page.

    Args:
        level: depth of these URLs; it goes into their records.
        retry: how often and how late a transiently failed URL is tried again.
        deadline: ``time.monotonic()`` value by which every fetch must have ended; waiting for
            a busy host is cut short so that it is met.
    """
    futures = [
        executor.submit(_fetch_one, fetcher, spec, level, item, retry, deadline) for item in items
    ]
    outcome = BatchOutcome()
    for future in futures:
        result = future.result()
        if isinstance(result, RetryLater):
            outcome.retries.append(result)
            continue
        outcome.records.append(result)
        if result.ok:
            outcome.links.update(
                link for link in result.links if in_scope(link, spec.allowed_domains)
            )
            if result.final_url and result.final_url != result.url:
                outcome.redirected.add(urldefrag(result.final_url).url)
    return outcome


def _fetch_one(
    fetcher: PageFetcher,
    spec: CrawlSpec,
    level: int,
    item: CrawlURL,
    retry: RetryPolicy,
    deadline: float,
) -> PageRecord | RetryLater:
    attempts = item.attempt + 1
    max_wait = max(0.0, deadline - time.monotonic() - spec.timeout)
    try:
        page = fetcher.fetch(
            item.url,
            headers={},
            selectors=spec.selectors,
            max_bytes=spec.max_bytes,
            timeout=spec.timeout,
            max_wait=max_wait,
        )
    except Exception as exc:  # one page never fails the batch
        if retry.retries(exc):
            if item.attempt < retry.max_retries:
                delay = retry.delay(item.attempt, getattr(exc, "retry_after", None))
                return RetryLater(item.url, item.attempt + 1, delay, f"{exc}")
            return _failed(item.url, level, attempts, "retries-exhausted", exc)
        error_type = refusal_type(exc)
        if error_type is None:
            logger.exception("unexpected error fetching %s", item.url)
            error_type = "unexpected"
        return _failed(item.url, level, attempts, error_type, exc)
    return PageRecord(
        url=item.url,
        depth=level,
        status=page.status,
        final_url=page.final_url,
        content_type=page.content_type,
        title=page.title,
        bytes=page.bytes,
        elapsed_ms=round(page.elapsed_ms, 3),
        links=page.links,
        fields=page.fields,
        attempts=attempts,
        fetched_at=now_iso(),
    )


def _failed(url: str, level: int, attempts: int, error_type: str, exc: Exception) -> PageRecord:
    return failed_record(url, level, attempts, error_type, f"{type(exc).__name__}: {exc}")
