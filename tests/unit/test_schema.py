"""JSON Schema export of task contracts (``tasklane contracts export``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from tasklane.contracts import REGISTRY, SEND_EMAIL, SEND_IM
from tasklane.schema import JSON_SCHEMA_DIALECT, contract_schemas, export_schemas


def _violations(schema: dict[str, Any], instance: dict[str, Any]) -> list[str]:
    """What ``instance`` breaks by a Draft 2020-12 validator: ``<path>: <keyword>``, and the
    object's own errors (a field required or not allowed) with their message."""
    validator = Draft202012Validator(schema)
    return sorted(
        f"{'.'.join(map(str, error.absolute_path))}: {error.validator}"
        if error.absolute_path
        else f"{error.validator}: {error.message}"
        for error in validator.iter_errors(instance)
    )


def test_export_writes_a_payload_and_a_result_schema_per_contract(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "contracts"

    written = export_schemas(REGISTRY, out)

    expected = {f"{c.name}.json" for c in REGISTRY} | {f"{c.name}.result.json" for c in REGISTRY}
    assert len(written) == 2 * len(REGISTRY)
    assert {path.name for path in written} == expected
    assert {path.name for path in out.iterdir()} == expected
    for contract in REGISTRY:
        payload, result = contract_schemas(contract)
        assert json.loads((out / f"{contract.name}.json").read_text()) == payload
        assert json.loads((out / f"{contract.name}.result.json").read_text()) == result


def test_export_overwrites_stale_files(tmp_path: Path) -> None:
    stale = tmp_path / f"{SEND_EMAIL.name}.json"
    stale.write_text("{}")

    export_schemas(REGISTRY, tmp_path)

    assert json.loads(stale.read_text())["title"] == SEND_EMAIL.name


def test_payload_schema_carries_routing_and_policy() -> None:
    payload, _ = contract_schemas(SEND_EMAIL)

    assert list(payload)[:4] == ["$schema", "title", "description", "x-tasklane"]
    assert payload["$schema"] == JSON_SCHEMA_DIALECT
    assert payload["title"] == "notifier.email.send"
    assert payload["description"] == SEND_EMAIL.description
    assert payload["x-tasklane"] == {
        "task": "notifier.email.send",
        "queue": "notifier.email",
        "dead_letter_queue": "notifier.email.dlq",
        "priority": 5,
        "soft_time_limit": 30.0,
        "time_limit": 45.0,
        "rate_limit": None,
        "max_retries": 8,
        "idempotency_key": ["idempotency_key"],
    }


def test_payload_schema_describes_the_model_fields() -> None:
    payload, _ = contract_schemas(SEND_EMAIL)

    assert payload["type"] == "object"
    assert set(payload["properties"]) == set(SEND_EMAIL.payload.model_fields)
    assert sorted(payload["required"]) == ["subject", "to"]
    # Payload models forbid unknown fields; the schema must say so to other languages too.
    assert payload["additionalProperties"] is False


def test_payload_schema_accepts_a_good_payload_and_rejects_a_bad_one() -> None:
    payload, _ = contract_schemas(SEND_EMAIL)
    good = {"to": ["ada@example.com"], "subject": "Hello", "text": "Hi Ada", "cc": []}
    bad = {"to": "ada@example.com", "subjekt": "Hello", "text": "Hi Ada"}

    assert _violations(payload, good) == []
    assert _violations(payload, bad) == [
        "additionalProperties: Additional properties are not allowed ('subjekt' was unexpected)",
        "required: 'subject' is a required property",
        "to: type",
    ]


def test_im_schema_restricts_the_channel() -> None:
    payload, _ = contract_schemas(SEND_IM)
    good = {"channel": "slack", "url": "https://hooks.example.com/x", "text": "deploy done"}

    assert payload["x-tasklane"]["queue"] == "notifier.im"
    assert _violations(payload, good) == []
    assert _violations(payload, {**good, "channel": "pigeon"}) == ["channel: enum"]
    assert _violations(payload, {**good, "text": ""}) == ["text: minLength"]


def test_result_schema_is_the_result_model() -> None:
    _, result = contract_schemas(SEND_EMAIL)
    sample = SEND_EMAIL.result(message_id="<1@example.com>", accepted=["ada@example.com"])

    assert result["$schema"] == JSON_SCHEMA_DIALECT
    assert result["title"] == "notifier.email.send.result"
    assert result["x-tasklane"] == {"task": "notifier.email.send"}
    assert set(result["properties"]) == set(SEND_EMAIL.result.model_fields)
    assert _violations(result, sample.model_dump(mode="json")) == []
    assert _violations(result, {"accepted": []}) == [
        "required: 'message_id' is a required property"
    ]
