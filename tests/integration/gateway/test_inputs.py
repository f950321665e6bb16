"""Every bad input the gateway refuses, each answered with a problem document and nothing published.

One gateway process on Redis serves the module; each test compares the queue before and after.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import redis

from tasklane.gateway.idempotency import fingerprint
from tests.integration.gateway.conftest import IM_TOKEN, NOTIFIER_TOKEN
from tests.support.gateway import GatewayProcess, waiting
from tests.support.harness import BrokerEnv

EMAIL = "/v1/tasks/notifier.email.send"
EMAIL_QUEUE = "notifier.email"
JSON_HEADERS = {"Content-Type": "application/json"}


def email(to: str = "ada@example.com", subject: str = "Hello") -> dict[str, Any]:
    return {"to": [to], "subject": subject, "text": "Hi."}


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == f"https://tasklane.dev/problems/{slug}"
    assert body["status"] == status
    assert body["title"] and body["detail"]
    return body


BAD_INPUTS: dict[str, tuple[dict[str, Any], int, str]] = {
    # id: (request arguments, status, problem slug)
    "no-token": ({"token": None, "json": email()}, 401, "unauthorized"),
    "unknown-token": ({"token": "not-a-token", "json": email()}, 401, "unauthorized"),
    "forbidden-task": ({"token": IM_TOKEN, "json": email()}, 403, "forbidden"),
    "unknown-task": (
        {"path": "/v1/tasks/notifier.fax.send", "json": email()},
        404,
        "unknown-task",
    ),
    "text-plain": (
        {"content": json.dumps(email()), "headers": {"Content-Type": "text/plain"}},
        415,
        "unsupported-media-type",
    ),
    "no-content-type": (
        {"content": json.dumps(email()), "headers": {}},
        415,
        "unsupported-media-type",
    ),
    "declared-too-large": (
        {"content": b"{" + b" " * 1_100_000 + b"}", "headers": JSON_HEADERS},
        413,
        "payload-too-large",
    ),
    "not-json": ({"content": b"{to: nobody", "headers": JSON_HEADERS}, 400, "invalid-json"),
    "not-utf8": ({"content": b'{"to": "\xff"}', "headers": JSON_HEADERS}, 400, "invalid-json"),
    "json-array": ({"content": b"[1, 2]", "headers": JSON_HEADERS}, 400, "invalid-json"),
    "json-string": ({"content": b'"hello"', "headers": JSON_HEADERS}, 400, "invalid-json"),
    "invalid-payload": (
        {"json": {"to": ["not-an-address"], "subject": ""}},
        422,
        "validation-failed",
    ),
    "bad-idempotency-key": (
        {"json": email(), "extra": {"Idempotency-Key": "tab\there"}},
        400,
        "invalid-idempotency-key",
    ),
    "long-idempotency-key": (
        {"json": email(), "extra": {"Idempotency-Key": "k" * 256}},
        400,
        "invalid-idempotency-key",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_is_refused_and_publishes_nothing(
    gateway: GatewayProcess, redis_env: BrokerEnv, case: str
) -> None:
    arguments, status, slug = BAD_INPUTS[case]
    token = arguments.get("token", NOTIFIER_TOKEN)
    headers = {**arguments.get("headers", {}), **arguments.get("extra", {})}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    before = waiting(redis_env, EMAIL_QUEUE)
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        request = client.build_request(
            "POST",
            arguments.get("path", EMAIL),
            json=arguments.get("json"),
            content=arguments.get("content"),
            headers=headers,
        )
        response = client.send(request)
    body = assert_problem(response, status, slug)
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    if status == 422:
        assert {"pointer": "/to/0", "detail": body["errors"][0]["detail"]} in body["errors"]
        assert "/subject" in {error["pointer"] for error in body["errors"]}
    assert waiting(redis_env, EMAIL_QUEUE) == before


def test_a_streamed_body_over_the_limit_is_413_without_content_length(
    gateway: GatewayProcess, redis_env: BrokerEnv
) -> None:
    def chunks() -> Any:
        yield b'{"to": ["ada@example.com"], "subject": "'
        for _ in range(40):
            yield b"x" * 32_768
        yield b'"}'

    before = waiting(redis_env, EMAIL_QUEUE)
    with gateway.client(NOTIFIER_TOKEN) as client:
        # A generator is sent chunked: the size is known only by counting.
        response = client.post(EMAIL, content=chunks(), headers=JSON_HEADERS)
    assert_problem(response, 413, "payload-too-large")
    assert waiting(redis_env, EMAIL_QUEUE) == before


def test_publish_answers_202_with_the_task_id_and_its_status_url(
    gateway: GatewayProcess, redis_env: BrokerEnv
) -> None:
    before = waiting(redis_env, EMAIL_QUEUE)
    with gateway.client(NOTIFIER_TOKEN) as client:
        response = client.post(EMAIL, json=email())
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["task"] == "notifier.email.send"
        assert body["status_url"] == f"/v1/tasks/{body['task_id']}"
        assert response.headers["Location"] == body["status_url"]
        status = client.get(body["status_url"])
    assert waiting(redis_env, EMAIL_QUEUE) == before + 1
    assert status.status_code == 200
    assert status.json() == {
        "task_id": body["task_id"],
        "task": "notifier.email.send",
        "state": "PENDING",
        "result": None,
        "error": None,
        "dead_letter_reason": None,
    }


def test_batch_is_all_or_nothing(gateway: GatewayProcess, redis_env: BrokerEnv) -> None:
    before = waiting(redis_env, EMAIL_QUEUE)
    payloads = [email(), email(to="bad address"), email(), {"subject": "no recipient", "text": "x"}]
    with gateway.client(NOTIFIER_TOKEN) as client:
        refused = client.post(f"{EMAIL}/batch", json={"payloads": payloads})
        body = assert_problem(refused, 422, "validation-failed")
        pointers = {error["pointer"] for error in body["errors"]}
        assert {"/payloads/1/to/0", "/payloads/3/to"} <= pointers
        assert all(p.startswith(("/payloads/1/", "/payloads/3/")) for p in pointers)
        assert waiting(redis_env, EMAIL_QUEUE) == before

        for envelope, pointer in (
            ({"payloads": []}, "/payloads"),
            ({"payloads": {}}, "/payloads"),
            ({"payloads": [email()], "extra": 1}, "/extra"),
            ({"payloads": [email(), 7]}, "/payloads/1"),
        ):
            problem = assert_problem(
                client.post(f"{EMAIL}/batch", json=envelope), 422, "validation-failed"
            )
            assert pointer in {error["pointer"] for error in problem["errors"]}
        assert waiting(redis_env, EMAIL_QUEUE) == before

        accepted = client.post(f"{EMAIL}/batch", json={"payloads": [email(), email(), email()]})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["task"] == "notifier.email.send"
    assert len(set(accepted.json()["task_ids"])) == 3
    assert waiting(redis_env, EMAIL_QUEUE) == before + 3


def test_idempotency_key_replays_the_first_answer_and_refuses_another_body(
    gateway: GatewayProcess, redis_env: BrokerEnv
) -> None:
    before = waiting(redis_env, EMAIL_QUEUE)
    key = {"Idempotency-Key": "order-1234-confirmation"}
    with gateway.client(NOTIFIER_TOKEN) as client:
        first = client.post(EMAIL, json=email(), headers=key)
        assert first.status_code == 202, first.text
        # Same body with keys in another order and other spacing: the same request.
        same = json.dumps({"text": "Hi.", "subject": "Hello", "to": ["ada@example.com"]}, indent=2)
        again = client.post(EMAIL, content=same, headers={**key, **JSON_HEADERS})
        assert again.status_code == 202
        assert again.json() == first.json()
        assert again.headers["Location"] == first.headers["Location"]
        assert again.headers["Idempotent-Replayed"] == "true"

        other = client.post(EMAIL, json=email(subject="Changed"), headers=key)
        assert_problem(other, 422, "idempotency-key-reused")
        # The same key on the batch route is another request, so a reuse.
        batch = client.post(f"{EMAIL}/batch", json={"payloads": [email()]}, headers=key)
        assert_problem(batch, 422, "idempotency-key-reused")
    assert waiting(redis_env, EMAIL_QUEUE) == before + 1


def test_idempotency_key_held_by_a_request_in_flight_is_409(
    gateway: GatewayProcess, redis_env: BrokerEnv
) -> None:
    # Another replica's claim, as it stands while that replica publishes.
    body = email(subject="in flight")
    claim = {"fingerprint": fingerprint("notifier.email.send", "one", body), "claim": "other"}
    client_redis = redis.Redis.from_url(redis_env.result_backend)
    client_redis.set(f"{redis_env.namespace}gateway:idem:shop:busy-key", json.dumps(claim), ex=60)
    before = waiting(redis_env, EMAIL_QUEUE)
    with gateway.client(NOTIFIER_TOKEN) as client:
        response = client.post(EMAIL, json=body, headers={"Idempotency-Key": "busy-key"})
    assert_problem(response, 409, "idempotency-key-in-flight")
    assert waiting(redis_env, EMAIL_QUEUE) == before


def test_status_of_unknown_ids_is_404_and_other_publishers_tasks_403(
    gateway: GatewayProcess,
) -> None:
    with gateway.client(NOTIFIER_TOKEN) as client:
        task_id = client.post(EMAIL, json=email()).json()["task_id"]
        assert_problem(client.get("/v1/tasks/no-such-id"), 404, "not-found")
    with gateway.client(IM_TOKEN) as client:
        assert_problem(client.get(f"/v1/tasks/{task_id}"), 403, "forbidden")
    with gateway.client() as client:
        assert_problem(client.get(f"/v1/tasks/{task_id}"), 401, "unauthorized")


def test_probes_metrics_and_openapi_are_served_on_the_same_port(gateway: GatewayProcess) -> None:
    with gateway.client(NOTIFIER_TOKEN) as client:
        client.post(EMAIL, json=email())
        client.post(EMAIL, json={"to": []})
        assert client.get("/livez").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "redis": True, "broker": True}
        document = client.get("/openapi.json").json()
        metrics = client.get("/metrics").text
        assert_problem(client.get("/nowhere"), 404, "not-found")
    assert document["openapi"].startswith("3.1")
    assert "/v1/tasks/notifier.email.send" in document["paths"]
    for line in (
        'tasklane_gateway_requests_total{publisher="shop",status="202",task="notifier.email.send"}',
        'tasklane_gateway_requests_total{publisher="shop",status="422",task="notifier.email.send"}',
        'tasklane_gateway_tasks_published_total{publisher="shop",task="notifier.email.send"}',
        'tasklane_gateway_request_duration_seconds_count{task="notifier.email.send"}',
    ):
        assert line in metrics
