"""Instant messages over webhooks: DingTalk robots, Slack incoming webhooks, generic JSON.

Every request carries ``Idempotency-Key``, the same for every copy of one delivery. A generic
webhook with a secret is signed twice, over the exact bytes sent:

- ``X-Tasklane-Timestamp``: Unix seconds when the request was built (new on every attempt);
- ``X-Tasklane-Signature`` (v1): ``sha256=`` + hex HMAC-SHA256(secret, ``<ts>.<body>``),
  unchanged, so that receivers verifying it keep working; it does not cover the key;
- ``X-Tasklane-Signature-V2``: ``sha256=`` + hex HMAC-SHA256(secret, ``v2.<ts>.<key>.<body>``),
  which lets a receiver trust ``Idempotency-Key`` (:func:`verify_signature_v2`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from tasklane.contracts.notifier import IMPayload
from tasklane.errors import PermanentError, TransientError
from tasklane.net.retry_after import retry_after_seconds

_EXCERPT = 500
# RFC 9110 token characters except the dot, which separates the parts of the v2 signed string.
_IDEMPOTENCY_KEY = re.compile(r"[!#$%&'*+\-^_`|~0-9A-Za-z]{1,255}")
# DingTalk's "sending too fast" error: the robot is throttled for a while, retrying later works.
_DINGTALK_THROTTLED = 130101


@dataclass(frozen=True)
class WebhookRequest:
    """Everything needed to post one message; ``content`` is ``json`` exactly as sent (signed)."""

    channel: Literal["dingtalk", "slack", "webhook"]
    url: str
    params: dict[str, str]
    json: dict[str, Any]
    headers: dict[str, str]
    content: bytes


@dataclass(frozen=True)
class WebhookOutcome:
    """The webhook's answer: status code and the first 500 characters of the body."""

    status_code: int
    response: str


def dingtalk_signature(secret: str, timestamp_ms: int) -> str:
    """DingTalk robot signature: base64(HMAC-SHA256(secret, "<timestamp>\\n<secret>"))."""
    string_to_sign = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), string_to_sign, hashlib.sha256).digest()
    # Not URL-encoded here: httpx encodes query parameters when it builds the URL.
    return base64.b64encode(digest).decode("ascii")


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """``X-Tasklane-Signature`` (v1): ``sha256=<hex HMAC-SHA256(secret, "<ts>.<body>")>``.

    Does not cover ``Idempotency-Key``; kept unchanged for receivers that verify it.
    """
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_signature(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """Check an ``X-Tasklane-Signature`` (v1) header against the raw body and timestamp header."""
    expected = webhook_signature(secret, timestamp, body)
    return hmac.compare_digest(expected.encode(), header.encode("utf-8", "surrogateescape"))


def webhook_signature_v2(secret: str, timestamp: str, idempotency_key: str, body: bytes) -> str:
    """``X-Tasklane-Signature-V2``: ``sha256=<hex HMAC-SHA256(secret, "v2.<ts>.<key>.<body>")>``.

    ``key`` is the ``Idempotency-Key`` header as sent. The timestamp (digits) and the key (a token
    without dots) cannot hold the separator, so the signed string splits one way only; its ``v2.``
    start sets it apart from every v1 string, which starts with a digit.

    Raises:
        ValueError: the timestamp is not digits, or the key is not a dotless token.
    """
    if not timestamp.isascii() or not timestamp.isdigit():
        raise ValueError(f"timestamp {timestamp!r} is not Unix seconds")
    _check_idempotency_key(idempotency_key)
    signed = b"v2." + timestamp.encode() + b"." + idempotency_key.encode() + b"." + body
    mac = hmac.new(secret.encode(), signed, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_signature_v2(
    secret: str, timestamp: str, idempotency_key: str, body: bytes, header: str
) -> bool:
    """Check an ``X-Tasklane-Signature-V2`` header; the ``Idempotency-Key`` is trusted only then.

    Pass the ``X-Tasklane-Timestamp`` and ``Idempotency-Key`` headers and the raw body as received.
    Whether the timestamp is recent enough (replays) is the receiver's call.
    """
    try:
        expected = webhook_signature_v2(secret, timestamp, idempotency_key, body)
    except ValueError:  # headers the notifier never sends
        return False
    return hmac.compare_digest(expected.encode(), header.encode("utf-8", "surrogateescape"))


def _check_idempotency_key(key: str) -> None:
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise ValueError(f"idempotency key {key!r} is not a header token without dots")


def build_request(
    payload: IMPayload, secret: str | None, *, now: float, idempotency_key: str
) -> WebhookRequest:
    """Build the request for ``payload``, signed with ``secret`` when given (Slack ignores it).

    ``idempotency_key`` goes in the ``Idempotency-Key`` header of every channel; it is the same for
    every copy of one delivery (:mod:`notifier.identity`). A signed generic webhook carries two
    signatures: v1 over timestamp and body (unchanged), v2 over timestamp, key and body.
    """
    _check_idempotency_key(idempotency_key)
    params: dict[str, str] = {}
    headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
    body: dict[str, Any]
    if payload.channel == "dingtalk":
        if payload.title is None:
            body = {"msgtype": "text", "text": {"content": payload.text}}
        else:
            body = {
                "msgtype": "markdown",
                "markdown": {"title": payload.title, "text": payload.text},
            }
        if secret is not None:
            timestamp_ms = int(now * 1000)
            params = {
                "timestamp": str(timestamp_ms),
                "sign": dingtalk_signature(secret, timestamp_ms),
            }
        content = _serialize(body)
    elif payload.channel == "slack":
        text = payload.text if payload.title is None else f"*{payload.title}*\n{payload.text}"
        body = {"text": text}
        content = _serialize(body)
    else:
        sent_at = datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="milliseconds")
        body = {"title": payload.title, "text": payload.text, "sent_at": sent_at}
        content = _serialize(body)
        if secret is not None:
            timestamp = str(int(now))
            headers["X-Tasklane-Timestamp"] = timestamp
            headers["X-Tasklane-Signature"] = webhook_signature(secret, timestamp, content)
            headers["X-Tasklane-Signature-V2"] = webhook_signature_v2(
                secret, timestamp, idempotency_key, content
            )
    return WebhookRequest(
        channel=payload.channel,
        url=str(payload.url),
        params=params,
        json=body,
        headers=headers,
        content=content,
    )


def _serialize(body: dict[str, Any]) -> bytes:
    # Serialized here rather than by httpx so that a signature covers the exact bytes sent.
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def post(client: httpx.Client, request: WebhookRequest) -> WebhookOutcome:
    """Send ``request``; raises TransientError or PermanentError when it was not delivered."""
    # Webhook URLs carry their credentials (DingTalk's access_token, Slack's path): name only
    # the host in errors, which end up in logs and results.
    url = httpx.URL(request.url)
    target = f"webhook {url.host}"
    try:
        # Merged here: httpx 0.28 replaces the URL's own query (DingTalk's access_token) with
        # ``params=`` instead of adding to it.
        response = client.post(
            url.copy_merge_params(request.params),
            content=request.content,
            headers=request.headers,
        )
    except httpx.TimeoutException as exc:
        raise TransientError(f"{target} timed out: {type(exc).__name__}") from exc
    except httpx.TransportError as exc:
        raise TransientError(f"{target} unreachable: {exc}") from exc
    status = response.status_code
    excerpt = response.text[:_EXCERPT]
    if status == 429 or 500 <= status < 600:
        raise TransientError(
            f"{target} answered {status}: {excerpt}",
            retry_after=retry_after_seconds(response.headers.get("Retry-After")),
        )
    if not 200 <= status < 300:
        raise PermanentError(f"{target} answered {status}: {excerpt}")
    if request.channel == "dingtalk":
        _check_dingtalk(target, response)
    return WebhookOutcome(status_code=status, response=excerpt)


def _check_dingtalk(target: str, response: httpx.Response) -> None:
    # DingTalk reports failures (bad signature, throttling, keyword mismatch) inside a 200.
    try:
        answer = response.json()
    except ValueError:
        return
    if not isinstance(answer, dict):
        return
    errcode = answer.get("errcode", 0)
    if errcode == 0:
        return
    message = f"{target} answered errcode {errcode}: {answer.get('errmsg', '')}"
    if errcode == _DINGTALK_THROTTLED:
        raise TransientError(message)
    raise PermanentError(message)
