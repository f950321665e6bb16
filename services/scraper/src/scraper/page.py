"""One page, politely: robots.txt, the per-host gate, the guarded fetch and extraction.

Plain domain code shared by ``scraper.page.fetch`` and the crawl batches; it knows nothing of
Celery. Thread-safe: a crawl batch calls :meth:`PageFetcher.fetch` from several threads.

Every request of a fetch passes the same admission (:meth:`PageFetcher._admit`), redirect hops
as much as the first URL: robots.txt of the request's origin, then its host's turn.
Design: docs/scraper.md#politeness-redirects-and-robotstxt.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from scraper.extract import extract
from scraper.fetch import FetchLimits, fetch
from scraper.politeness import DomainGate, host_key
from scraper.robots import RobotsCache
from tasklane.contracts.scraper import FetchResult, FieldSelector
from tasklane.errors import TransientError


@dataclass(frozen=True)
class PageFetcher:
    """Everything one page fetch needs, built once per worker process.

    ``robots`` should take its turns at ``gate`` too (``RobotsCache(..., gate=gate)``), so that
    fetching robots.txt counts against its host like any other request.
    """

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

        Each request, the first and every redirect hop, must be allowed by robots.txt of its
        origin (a hop robots.txt disallows is refused as that URL asked for directly would be)
        and waits for its host's turn.

        Args:
            max_wait: seconds to wait for the host's turn before the first request (default:
                the configured one); a redirect hop waits within ``timeout``.

        Raises:
            RobotsDisallowedError, UnsafeURLError, PermanentError: never worth retrying.
            TransientError: worth retrying later (``retry_after`` when the server said so).
        """
        limits = FetchLimits(
            max_bytes=max_bytes,
            connect_timeout=self.limits.connect_timeout,
            read_timeout=self.limits.read_timeout,
            total_timeout=timeout,
            max_redirects=self.limits.max_redirects,
        )
        page = fetch(
            self.http,
            url,
            headers=headers,
            limits=limits,
            user_agent=self.user_agent,
            admit=self._admit,
            max_wait=self.max_wait if max_wait is None else max_wait,
        )
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

    @contextmanager
    def _admit(self, url: str, max_wait: float) -> Iterator[None]:
        """Admit one request to ``url``: refuse it unless robots.txt allows it, else hold its
        host's turn while it runs. A ``Retry-After`` it gets closes that host, the one that
        answered, to every worker."""
        if urlsplit(url).scheme not in ("http", "https"):
            yield  # no robots.txt or turn to take: the guard refuses it before connecting
            return
        deadline = time.monotonic() + max_wait
        self.robots.check(url, max_wait=max_wait)
        host = host_key(url)
        delay = self.robots.crawl_delay(url)
        with self.gate.turn(host, max_wait=max(0.0, deadline - time.monotonic()), min_delay=delay):
            try:
                yield
            except TransientError as exc:
                if exc.retry_after:
                    # Every worker backs off from this host, not only the one that was told to.
                    self.gate.defer(host, exc.retry_after)
                raise
