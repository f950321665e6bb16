"""The scraper's own metrics: pages by HTTP status, bytes read, and refusals by kind.

Recorded by the task functions, beside the platform's per-task metrics
(``tasklane.observability.metrics``).
Labels are HTTP status codes and the fixed refusal kinds of :func:`scraper.crawl.refusal_type`.
"""

from __future__ import annotations

from collections.abc import Iterable

from scraper.records import PageRecord
from tasklane.observability.metrics import service_counter


def pages(status: int, body_bytes: int) -> None:
    """One page fetched (whatever its status) and the bytes read for it."""
    service_counter("tasklane_scraper_pages", "Pages fetched, by HTTP status.", ("status",)).labels(
        str(status)
    ).inc()
    service_counter("tasklane_scraper_page_bytes", "Body bytes read from the network.", ()).inc(
        body_bytes
    )


def refusal(kind: str) -> None:
    """One URL refused or given up (robots-disallowed, unsafe-url, too-large, ...)."""
    service_counter(
        "tasklane_scraper_refusals", "URLs refused or given up, by kind.", ("kind",)
    ).labels(kind).inc()


def records(settled: Iterable[PageRecord]) -> None:
    """Count what a crawl batch settled."""
    for record in settled:
        if record.ok and record.status is not None:
            pages(record.status, record.bytes)
        elif record.error_type:
            refusal(record.error_type)
