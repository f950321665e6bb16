"""RFC 9457 problem details: every error answer of the gateway, with JSON Pointers to the fields.

Slugs and statuses: docs/gateway.md#errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.responses import Response

from tasklane.errors import Problem

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://tasklane.dev/problems/"

#: Each problem type's status and title.
PROBLEMS: dict[str, tuple[int, str]] = {
    "invalid-json": (400, "Request body is not a JSON object"),
    "invalid-idempotency-key": (400, "Invalid Idempotency-Key"),
    "unauthorized": (401, "Missing or unknown bearer token"),
    "forbidden": (403, "Task not allowed for this token"),
    "unknown-task": (404, "Unknown task"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "idempotency-key-in-flight": (409, "A request with this Idempotency-Key is in flight"),
    "payload-too-large": (413, "Request body too large"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "validation-failed": (422, "Payload does not satisfy the contract"),
    "idempotency-key-reused": (422, "Idempotency-Key reused with a different body"),
    "rate-limited": (429, "Rate limit exceeded"),
    "broker-unavailable": (503, "Broker unavailable"),
    "state-unavailable": (503, "State store (Redis) unavailable"),
    "internal-error": (500, "Internal server error"),
}


def problem(
    slug: str,
    detail: str,
    *,
    errors: list[dict[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The ``application/problem+json`` answer of one problem type."""
    status, title = PROBLEMS[slug]
    body: dict[str, Any] = {
        "type": TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    return Response(
        json.dumps(body, ensure_ascii=False).encode(),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=dict(headers or {}),
    )


def pointer(location: Iterable[str | int], prefix: str = "") -> str:
    """An RFC 6901 JSON Pointer: ``("to", 0)`` -> ``/to/0`` (``~`` and ``/`` escaped)."""
    parts = [str(part).replace("~", "~0").replace("/", "~1") for part in location]
    return prefix + "".join(f"/{part}" for part in parts)


def field_errors(problems: Iterable[Problem], prefix: str = "") -> list[dict[str, str]]:
    """One ``{"pointer", "detail"}`` per problem, pointers into the request body."""
    return [
        {"pointer": pointer(item.location, prefix), "detail": item.message} for item in problems
    ]
