"""notifier.webhooks against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Iterator
from email.utils import formatdate
from urllib.parse import quote_plus

import httpx
import pytest

from notifier.webhooks import (
    WebhookOutcome,
    build_request,
    dingtalk_signature,
    post,
    verify_signature,
    verify_signature_v2,
    webhook_signature_v2,
)
from tasklane.contracts.notifier import IMPayload
from tasklane.errors import PermanentError, TransientError
from tasklane_dev.sinks import Reply, WebhookSink

NOW = 1_700_000_000.123
KEY = "0123456789abcdef0123456789abcdef"
DINGTALK_OK = b'{"errcode":0,"errmsg":"ok"}'


@pytest.fixture
def server() -> Iterator[WebhookSink]:
    with WebhookSink() as sink:
        yield sink


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=2.0) as http:
        yield http


def im(
    channel: str, url: str, text: str = "Deploy finished", title: str | None = None
) -> IMPayload:
    return IMPayload.model_validate({"channel": channel, "url": url, "text": text, "title": title})


def send(
    client: httpx.Client,
    payload: IMPayload,
    secret: str | None = None,
    now: float = NOW,
    key: str = KEY,
) -> WebhookOutcome:
    return post(client, build_request(payload, secret, now=now, idempotency_key=key))


def test_dingtalk_text_is_signed(server: WebhookSink, client: httpx.Client) -> None:
    server.script(Reply(body=DINGTALK_OK))
    payload = im("dingtalk", f"{server.url}/robot/send?access_token=tok123")

    outcome = send(client, payload, secret="SECabc+/=")

    assert outcome == WebhookOutcome(status_code=200, response=DINGTALK_OK.decode())
    [seen] = server.requests
    assert seen.path == "/robot/send"
    assert seen.query["access_token"] == "tok123"
    assert seen.query["timestamp"] == "1700000000123"
    # DingTalk's documented algorithm, recomputed independently of the module under test.
    string_to_sign = f"{seen.query['timestamp']}\nSECabc+/=".encode()
    digest = hmac.new(b"SECabc+/=", string_to_sign, hashlib.sha256).digest()
    expected = base64.b64encode(digest).decode()
    assert seen.query["sign"] == expected
    assert f"sign={quote_plus(expected)}" in seen.raw_query
    assert seen.headers["content-type"] == "application/json"
    assert json.loads(seen.body) == {"msgtype": "text", "text": {"content": "Deploy finished"}}


def test_dingtalk_signature_known_value() -> None:
    digest = hmac.new(b"s", b"1000\ns", hashlib.sha256).digest()
    assert dingtalk_signature("s", 1000) == base64.b64encode(digest).decode()
    assert dingtalk_signature("s", 1000) != dingtalk_signature("s", 1001)


def test_dingtalk_markdown_without_secret(server: WebhookSink, client: httpx.Client) -> None:
    server.script(Reply(body=DINGTALK_OK))
    payload = im("dingtalk", f"{server.url}/robot/send?access_token=t", "**all** good", "Deploy")

    send(client, payload)

    [seen] = server.requests
    assert set(seen.query) == {"access_token"}
    assert json.loads(seen.body) == {
        "msgtype": "markdown",
        "markdown": {"title": "Deploy", "text": "**all** good"},
    }


@pytest.mark.parametrize(
    ("errcode", "errmsg", "error"),
    [
        (310000, "sign not match", PermanentError),
        (130101, "send too fast", TransientError),
    ],
)
def test_dingtalk_errcode(
    server: WebhookSink,
    client: httpx.Client,
    errcode: int,
    errmsg: str,
    error: type[Exception],
) -> None:
    server.script(Reply(body=json.dumps({"errcode": errcode, "errmsg": errmsg}).encode()))
    payload = im("dingtalk", f"{server.url}/robot/send?access_token=secret-token")

    with pytest.raises(error) as caught:
        send(client, payload, secret="SEC")

    assert type(caught.value) is error
    assert str(errcode) in str(caught.value)
    assert errmsg in str(caught.value)
    assert "secret-token" not in str(caught.value)


def test_slack_body_and_unsigned(server: WebhookSink, client: httpx.Client) -> None:
    server.script(Reply(body=b"ok"))
    payload = im("slack", f"{server.url}/services/T0/B0/xyz", "all good", "Deploy")

    outcome = send(client, payload, secret="ignored")

    assert outcome == WebhookOutcome(status_code=200, response="ok")
    [seen] = server.requests
    assert seen.body == b'{"text":"*Deploy*\\nall good"}'
    assert seen.raw_query == ""
    assert "x-tasklane-signature" not in seen.headers
    assert "x-tasklane-signature-v2" not in seen.headers


def test_slack_other_200_body_is_accepted(server: WebhookSink, client: httpx.Client) -> None:
    server.script(Reply(body=b'{"errcode": 1}'))

    outcome = send(client, im("slack", f"{server.url}/hook"))

    assert outcome.status_code == 200
    assert json.loads(server.requests[0].body) == {"text": "Deploy finished"}


def test_generic_webhook_is_signed_over_the_raw_body(
    server: WebhookSink, client: httpx.Client
) -> None:
    payload = im("webhook", f"{server.url}/events", "Grüße, 世界", "Deploy")

    send(client, payload, secret="hook-key")

    [seen] = server.requests
    timestamp = seen.headers["x-tasklane-timestamp"]
    signature = seen.headers["x-tasklane-signature"]
    assert timestamp == "1700000000"
    assert signature.startswith("sha256=")
    assert verify_signature("hook-key", timestamp, seen.body, signature)
    expected = hmac.new(b"hook-key", f"{timestamp}.".encode() + seen.body, hashlib.sha256)
    assert signature == f"sha256={expected.hexdigest()}"
    assert not verify_signature("other-key", timestamp, seen.body, signature)
    assert not verify_signature("hook-key", "1700000001", seen.body, signature)
    assert not verify_signature("hook-key", timestamp, seen.body + b" ", signature)
    assert json.loads(seen.body) == {
        "title": "Deploy",
        "text": "Grüße, 世界",
        "sent_at": "2023-11-14T22:13:20.123+00:00",
    }


def test_generic_webhook_v2_signature_covers_the_idempotency_key(
    server: WebhookSink, client: httpx.Client
) -> None:
    send(client, im("webhook", f"{server.url}/events", "Grüße"), secret="hook-key")

    [seen] = server.requests
    timestamp = seen.headers["x-tasklane-timestamp"]
    key = seen.headers["idempotency-key"]
    signature = seen.headers["x-tasklane-signature-v2"]
    assert key == KEY
    # The documented signed string, recomputed independently of the module under test.
    signed = f"v2.{timestamp}.{key}.".encode() + seen.body
    expected = hmac.new(b"hook-key", signed, hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"
    assert verify_signature_v2("hook-key", timestamp, key, seen.body, signature)
    assert not verify_signature_v2("hook-key", timestamp, KEY[::-1], seen.body, signature)
    assert not verify_signature_v2("hook-key", timestamp, key + "0", seen.body, signature)
    assert not verify_signature_v2("other-key", timestamp, key, seen.body, signature)
    assert not verify_signature_v2("hook-key", "1700000001", key, seen.body, signature)
    assert not verify_signature_v2("hook-key", timestamp, key, seen.body + b" ", signature)
    assert not verify_signature_v2("hook-key", timestamp, "\udcff", seen.body, signature)
    # v1 stays as it was: receivers verifying it keep working, and v1 is no v2.
    v1 = seen.headers["x-tasklane-signature"]
    assert verify_signature("hook-key", timestamp, seen.body, v1)
    assert v1 != signature
    assert not verify_signature_v2("hook-key", timestamp, key, seen.body, v1)


def test_v2_signed_strings_split_one_way_only() -> None:
    # Without the rules, ("1", "ab", b"c.d") and ("1", "ab.c", b"d") would sign one string.
    with pytest.raises(ValueError, match="idempotency key"):
        webhook_signature_v2("s", "1", "ab.c", b"d")
    with pytest.raises(ValueError, match="timestamp"):
        webhook_signature_v2("s", "1.ab", "c", b"d")
    assert not verify_signature_v2(
        "s", "1", "ab.c", b"d", webhook_signature_v2("s", "1", "ab", b"c.d")
    )
    assert webhook_signature_v2("s", "1", KEY, b"{}") == webhook_signature_v2("s", "1", KEY, b"{}")


@pytest.mark.parametrize(
    ("channel", "path", "secret"),
    [
        ("dingtalk", "/robot/send?access_token=t", "SEC"),
        ("slack", "/services/T0/B0/x", None),
        ("webhook", "/events", None),
        ("webhook", "/events", "hook-key"),
    ],
)
def test_every_channel_carries_the_idempotency_key(
    server: WebhookSink, client: httpx.Client, channel: str, path: str, secret: str | None
) -> None:
    send(client, im(channel, f"{server.url}{path}"), secret=secret)
    send(client, im(channel, f"{server.url}{path}"), secret=secret, now=NOW + 30)

    first, retried = server.requests
    assert first.headers["idempotency-key"] == retried.headers["idempotency-key"] == KEY


@pytest.mark.parametrize("key", ["", "has.dot", "line\r\nbreak", "spa ce", "ü", "x" * 256])
def test_an_idempotency_key_that_is_no_dotless_token_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match="idempotency key"):
        build_request(
            im("webhook", "https://hooks.example.com/e"), "s", now=NOW, idempotency_key=key
        )


def test_generic_webhook_without_secret_is_unsigned(
    server: WebhookSink, client: httpx.Client
) -> None:
    send(client, im("webhook", f"{server.url}/events"))

    [seen] = server.requests
    assert "x-tasklane-signature" not in seen.headers
    assert "x-tasklane-signature-v2" not in seen.headers
    assert "x-tasklane-timestamp" not in seen.headers
    assert seen.headers["idempotency-key"] == KEY
    assert json.loads(seen.body)["title"] is None


def test_server_error_is_transient(server: WebhookSink, client: httpx.Client) -> None:
    server.script(Reply(status=500, body=b"boom"))

    with pytest.raises(TransientError, match="answered 500: boom") as caught:
        send(client, im("webhook", f"{server.url}/events"))

    assert caught.value.retry_after is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [({"Retry-After": "7"}, 7.0), ({}, None), ({"Retry-After": "soon"}, None)],
)
def test_too_many_requests_is_transient_with_retry_after(
    server: WebhookSink,
    client: httpx.Client,
    header: dict[str, str],
    expected: float | None,
) -> None:
    server.script(Reply(status=429, body=b"slow down", headers=header))

    with pytest.raises(TransientError, match="429") as caught:
        send(client, im("slack", f"{server.url}/hook"))

    assert caught.value.retry_after == expected


def test_retry_after_as_http_date(server: WebhookSink, client: httpx.Client) -> None:
    when = formatdate(time.time() + 30, usegmt=True)
    server.script(Reply(status=503, body=b"maintenance", headers={"Retry-After": when}))

    with pytest.raises(TransientError) as caught:
        send(client, im("webhook", f"{server.url}/events"))

    assert caught.value.retry_after is not None
    assert 25 <= caught.value.retry_after <= 30


def test_client_error_is_permanent_with_body(server: WebhookSink, client: httpx.Client) -> None:
    server.script(Reply(status=400, body=b"invalid_payload"))

    with pytest.raises(PermanentError, match="answered 400: invalid_payload"):
        send(client, im("slack", f"{server.url}/services/T0/B0/secret-path"))


def test_error_messages_do_not_leak_the_url(server: WebhookSink, client: httpx.Client) -> None:
    server.script(Reply(status=404, body=b"no_service"))

    with pytest.raises(PermanentError) as caught:
        send(client, im("slack", f"{server.url}/services/T0/B0/secret-path"))

    assert "secret-path" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)


def test_long_answer_is_truncated(server: WebhookSink, client: httpx.Client) -> None:
    server.script(Reply(body=b"x" * 2000))

    outcome = send(client, im("slack", f"{server.url}/hook"))

    assert outcome.response == "x" * 500


def test_slow_server_is_transient(server: WebhookSink) -> None:
    server.script(Reply(delay=30.0))
    started = time.monotonic()

    with httpx.Client(timeout=0.3) as slow_client, pytest.raises(TransientError, match="timed out"):
        send(slow_client, im("webhook", f"{server.url}/events"))

    assert time.monotonic() - started < 5
    assert len(server.requests) == 1


def test_unreachable_server_is_transient(client: httpx.Client) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused

        with pytest.raises(TransientError, match="unreachable"):
            send(client, im("webhook", f"http://127.0.0.1:{port}/events"))
