"""Celery task message protocol v2 in JSON: what goes on the wire for one task.

Documented for non-Python publishers in ``docs/protocol.md``; every Tasklane publisher path and the
dead-letter tools build messages through these functions.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tasklane.wire.headers import PUBLISHED_AT

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"


_EMBED: dict[str, None] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_EMBED_JSON = json.dumps(_EMBED, separators=(",", ":"))
_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"


@dataclass(frozen=True)
class TaskMessage:
    """One encoded task message: body bytes, headers and AMQP properties."""

    task_id: str
    body: bytes
    headers: dict[str, Any]
    properties: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """This message as JSON data, to be stored (an outbox row); :meth:`from_json` reverses."""
        return {
            "task_id": self.task_id,
            "body": self.body.decode(CONTENT_ENCODING),
            "headers": self.headers,
            "properties": self.properties,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskMessage:
        """The message :meth:`to_json` stored."""
        return cls(
            str(data["task_id"]),
            str(data["body"]).encode(CONTENT_ENCODING),
            dict(data["headers"]),
            dict(data["properties"]),
        )


def encode_body(kwargs: dict[str, Any], args: list[Any] | None = None) -> bytes:
    """The protocol v2 body: ``[args, kwargs, embed]`` as UTF-8 JSON."""
    return json.dumps(
        [args or [], kwargs, _EMBED], separators=(",", ":"), ensure_ascii=False
    ).encode()


def task_headers(
    name: str,
    task_id: str,
    *,
    retries: int = 0,
    root_id: str | None = None,
    parent_id: str | None = None,
    kwargsrepr: str = "",
    published_at: float | None = None,
) -> dict[str, Any]:
    """The protocol v2 headers of one task message."""
    return {
        "lang": "py",
        "task": name,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": retries,
        "timelimit": [None, None],
        "root_id": root_id or task_id,
        "parent_id": parent_id,
        "argsrepr": "()",
        "kwargsrepr": kwargsrepr,
        "origin": _ORIGIN,
        "ignore_result": False,
        PUBLISHED_AT: time.time() if published_at is None else published_at,
    }


def task_message(
    name: str,
    task_id: str,
    kwargs: dict[str, Any],
    *,
    priority: int = 0,
    countdown: float | None = None,
    expires: float | None = None,
) -> TaskMessage:
    """Encode one task call; ``kwargs`` must already be JSON-compatible.

    ``countdown`` sets the ``eta`` header: the worker holds the task until then. ``expires``
    sets the ``expires`` header, seconds from now: a worker drops the task if it is later.
    """
    body = encode_body(kwargs)
    headers = task_headers(name, task_id, kwargsrepr=_kwargs_repr(body))
    now = datetime.now(UTC)
    if countdown:
        headers["eta"] = (now + timedelta(seconds=countdown)).isoformat()
    if expires is not None:
        headers["expires"] = (now + timedelta(seconds=expires)).isoformat()
    properties = {"correlation_id": task_id, "priority": priority}
    return TaskMessage(task_id, body, headers, properties)


def _kwargs_repr(body: bytes, limit: int = 512) -> str:
    # Flower and `celery inspect` show kwargsrepr. The kwargs are sliced out of the encoded body
    # ("[[],{...},{embed}]") rather than encoded twice, and capped to keep headers small.
    text = body.decode()[4 : -len(_EMBED_JSON) - 2]
    return text if len(text) <= limit else text[: limit - 3] + "..."
