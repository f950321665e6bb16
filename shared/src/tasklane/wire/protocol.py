"""Celery task message protocol v2 in JSON: what goes on the wire for one task.

Documented for non-Python publishers in ``docs/protocol.md``; every Tasklane publisher path and the
dead-letter tools build messages through these functions.
"""

from __future__ import annotations

import hashlib
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
_BODY_TAIL = f",{_EMBED_JSON}]".encode()
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
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


def body_from_json(kwargs_json: bytes) -> bytes:
    """The body :func:`encode_body` makes, of keyword arguments already encoded as a JSON object
    (pydantic's ``to_json`` of a payload: its Rust encoder costs a fraction of ``json.dumps``)."""
    return b"[[]," + kwargs_json + _BODY_TAIL


def new_id_key() -> bytes:
    """A fresh key for :func:`task_id_at`."""
    return os.urandom(32)


def task_id_at(key: bytes, index: int) -> str:
    """Task id number ``index`` of the ids ``key`` stands for: a version-4 UUID string.

    Its random bits are BLAKE2b of the index under ``key`` (32 bytes of ``os.urandom``): as
    unpredictable as ``uuid4`` to anyone without the key, unique with the same odds, and made
    again from the key and the index alone, so a million ids need not be held to be returned.
    """
    h = hashlib.blake2b(index.to_bytes(8, "little"), key=key, digest_size=16).hexdigest()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


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
    kwargs: dict[str, Any] | bytes,
    *,
    priority: int = 0,
    countdown: float | None = None,
    expires: float | None = None,
    published_at: float | None = None,
) -> TaskMessage:
    """Encode one task call; ``kwargs`` must already be JSON-compatible, or be the body itself.

    ``countdown`` sets the ``eta`` header: the worker holds the task until then. ``expires``
    sets the ``expires`` header, seconds from now: a worker drops the task if it is later.
    """
    body = kwargs if isinstance(kwargs, bytes) else encode_body(kwargs)
    headers = task_headers(name, task_id, kwargsrepr=kwargs_repr(body), published_at=published_at)
    headers["eta"], headers["expires"] = eta_and_expiry(countdown, expires)
    properties = {"correlation_id": task_id, "priority": priority}
    return TaskMessage(task_id, body, headers, properties)


def eta_and_expiry(countdown: float | None, expires: float | None) -> tuple[str | None, str | None]:
    """The ``eta`` and ``expires`` headers of a task sent now: ``countdown`` and ``expires``
    seconds from now, in ISO 8601 (``None``: no such header value)."""
    if not countdown and expires is None:
        return None, None
    now = datetime.now(UTC)
    return (
        (now + timedelta(seconds=countdown)).isoformat() if countdown else None,
        None if expires is None else (now + timedelta(seconds=expires)).isoformat(),
    )


def kwargs_repr(body: bytes, limit: int = 512) -> str:
    """The ``kwargsrepr`` header of a body :func:`encode_body` made.

    Flower and ``celery inspect`` show it. The kwargs are sliced out of the encoded body
    (``[[],{...},{embed}]``) rather than encoded twice, and capped to keep headers small.
    """
    text = body[4 : -len(_BODY_TAIL)].decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."
