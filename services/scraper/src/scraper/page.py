"""One page, politely: robots.txt, the per-host gate, the guarded fetch and extraction.

Plain domain code shared by ``scraper.page.fetch`` and the crawl batches; it knows nothing of
Celery. Thread-safe: a crawl batch calls :meth:`PageFetcher.fetch` from several threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from scraper.extract import extract
from scraper.fetch import FetchLimits, fetch
from scraper.politeness import DomainGate
from scraper.robots import RobotsCache
from tasklane.contracts.scraper import FetchResult, FieldSelector
from tasklane.errors import TransientError


@dataclass(frozen=True)
class PageFetcher:
    """Everything one page fetch needs, built once per worker process."""

    http: httpx.Client
    robots: RobotsCache
    gate: DomainGate
    user_agent: str
    limits: FetchLimits
    max_wait: float

    def fetch(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        selectors: Mapping[str, FieldSelector],
        max_bytes: int,
        timeout: float,
        max_wait: float | None = None,
    ) -> FetchResult:
        """Fetch ``url`` within the limits and extract its fields.

        Args:
            max_wait: seconds to wait for the host's turn (default: the configured one).

        Raises:
            RobotsDisallowedError, UnsafeURLError, PermanentError: never worth retrying.
            TransientError: worth retrying later (``retry_after`` when the server said so).
        """
        self.robots.check(url)
        host = urlsplit(url).hostname or ""
        limits = FetchLimits(
            max_bytes=max_bytes,
            connect_timeout=self.limits.connect_timeout,
            read_timeout=self.limits.read_timeout,
            total_timeout=timeout,
            max_redirects=self.limits.max_redirects,
        )
        wait = self.max_wait if max_wait is None else max_wait
        with self.gate.acquire(host, max_wait=wait, min_delay=self.robots.crawl_delay(url)):
            try:
                page = fetch(
                    self.http, url, headers=headers, limits=limits, user_agent=self.user_agent
                )
            except TransientError as exc:
                if exc.retry_after:
                    # Every worker backs off from this host, not only the one that was told to.
                    self.gate.defer(host, exc.retry_after)
                raise
        found = extract(
            page.body,
            encoding=page.encoding,
            content_type=page.content_type,
            base_url=page.final_url,
            selectors=selectors,
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
