"""Task contracts: the single source of truth for names, queues, payloads and policies."""

from __future__ import annotations

from tasklane.contracts.base import (
    ContractRegistry,
    Payload,
    Result,
    RetryPolicy,
    TaskContract,
)
from tasklane.contracts.media import (
    PROBE_VIDEO,
    THUMBNAIL_IMAGE,
    THUMBNAIL_VIDEO,
    TRANSCODE_VIDEO,
    TRANSFORM_IMAGE,
)
from tasklane.contracts.notifier import (
    SEND_EMAIL,
    SEND_IM,
    EmailPayload,
    EmailResult,
    IMPayload,
    IMResult,
)
from tasklane.contracts.ping import PingPayload, PingResult, ping_contracts
from tasklane.contracts.scraper import (
    BUILD_REPORT,
    CRAWL_ADVANCE,
    CRAWL_FETCH,
    CRAWL_SITE,
    CRAWL_STATUS,
    FETCH_PAGE,
    CrawlPayload,
    CrawlStatus,
    FetchPayload,
    FetchResult,
    FieldSelector,
    ReportPayload,
    ReportResult,
)

#: The contracts that do real work.
_WORK_CONTRACTS = (
    SEND_EMAIL,
    SEND_IM,
    FETCH_PAGE,
    CRAWL_SITE,
    CRAWL_STATUS,
    CRAWL_ADVANCE,
    CRAWL_FETCH,
    BUILD_REPORT,
    TRANSFORM_IMAGE,
    THUMBNAIL_IMAGE,
    PROBE_VIDEO,
    THUMBNAIL_VIDEO,
    TRANSCODE_VIDEO,
)

#: A no-op ``<queue>.ping`` per work queue (smoke tests, ``helm test``), on that same queue.
PING_CONTRACTS = ping_contracts(_WORK_CONTRACTS)

#: Every contract of the platform. Services and publishers read this registry.
REGISTRY = ContractRegistry((*_WORK_CONTRACTS, *PING_CONTRACTS))

__all__ = [
    "PROBE_VIDEO",
    "THUMBNAIL_IMAGE",
    "THUMBNAIL_VIDEO",
    "TRANSCODE_VIDEO",
    "TRANSFORM_IMAGE",
    "BUILD_REPORT",
    "CRAWL_ADVANCE",
    "CRAWL_FETCH",
    "CRAWL_SITE",
    "CRAWL_STATUS",
    "CrawlPayload",
    "CrawlStatus",
    "ReportPayload",
    "ReportResult",
    "ContractRegistry",
    "EmailPayload",
    "EmailResult",
    "FETCH_PAGE",
    "FetchPayload",
    "FetchResult",
    "FieldSelector",
    "IMPayload",
    "IMResult",
    "PING_CONTRACTS",
    "Payload",
    "PingPayload",
    "PingResult",
    "REGISTRY",
    "Result",
    "RetryPolicy",
    "SEND_EMAIL",
    "SEND_IM",
    "TaskContract",
]
