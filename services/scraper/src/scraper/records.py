"""What a crawl keeps of each page: the record written to Redis while it runs and to
``pages.jsonl`` in the artifact store when it completes. Reports are built from these records.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field


class PageRecord(BaseModel):
    """One URL of a crawl: fetched (``status`` set) or failed (``error`` set), never both unset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    depth: int = Field(ge=0, description="Links followed from a seed; seeds are depth 0.")
    status: int | None = Field(default=None, description="HTTP status; None when it failed.")
    final_url: str | None = None
    content_type: str | None = Field(default=None, description="Media type, lower case.")
    title: str | None = None
    bytes: int = Field(default=0, ge=0, description="Body bytes read from the network.")
    elapsed_ms: float | None = Field(default=None, ge=0, description="Time to fetch.")
    links: list[str] = Field(
        default_factory=list, description="Absolute http(s) links on the page, de-duplicated."
    )
    fields: dict[str, str | list[str] | None] = Field(default_factory=dict)
    error: str | None = Field(default=None, description="Why the page could not be fetched.")
    error_type: str | None = Field(
        default=None,
        description=(
            "Short class of the failure: robots-disallowed, unsafe-url, too-large, "
            "unsupported-type, too-many-redirects, retries-exhausted, dead-lettered, invalid."
        ),
    )
    attempts: int = Field(default=1, ge=1)
    fetched_at: str = Field(description="ISO 8601 UTC time the record was written.")

    @property
    def ok(self) -> bool:
        """Whether the page was fetched (whatever its HTTP status)."""
        return self.error is None


def failed_record(url: str, level: int, attempts: int, error_type: str, error: str) -> PageRecord:
    """The record of a URL that could not be fetched."""
    return PageRecord(
        url=url,
        depth=level,
        error=error or error_type,
        error_type=error_type,
        attempts=max(1, attempts),
        fetched_at=now_iso(),
    )


def now_iso() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")
