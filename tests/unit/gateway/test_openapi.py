"""The gateway's OpenAPI document (``tasklane contracts export --openapi``).

``oas-3.1-schema-2022-10-07.json`` beside this file is the OpenAPI Initiative's schema of
OpenAPI 3.1 documents, https://spec.openapis.org/oas/3.1/schema/2022-10-07 (the copy shipped in
openapi-spec-validator 0.9.0's resources/schemas/v3.1/schema.json). It checks the document's
structure; each schema object is checked against JSON Schema 2020-12's meta-schema apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from typer.testing import CliRunner

from tasklane.cli.main import app
from tasklane.contracts import REGISTRY, Payload, Result, TaskContract
from tasklane.gateway.openapi import TASK_STATES, openapi_document

OAS_31_SCHEMA = Path(__file__).with_name("oas-3.1-schema-2022-10-07.json")
PROBLEM = "application/problem+json"
CLI = "from tasklane.cli.main import main; main()"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi_document()


def _refs(node: Any, where: str = "#") -> Iterator[tuple[str, str]]:
    """Every ``$ref`` of ``node`` with the JSON Pointer of the object that holds it."""
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield where, node["$ref"]
        for key, value in node.items():
            yield from _refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _refs(item, f"{where}/{index}")


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _validator(document: dict[str, Any], component: str) -> jsonschema.Draft202012Validator:
    """A validator of one component schema that resolves refs within the document."""
    registry = Registry().with_resource("urn:openapi", DRAFT202012.create_resource(document))
    schema = {"$ref": f"urn:openapi#/components/schemas/{component}"}
    return jsonschema.Draft202012Validator(
        schema, registry=registry, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    meta = json.loads(OAS_31_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(meta).validate(document)
    assert document["openapi"] == "3.1.0"
    for name, schema in document["components"]["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:  # pragma: no cover - the message names the schema
            pytest.fail(f"components/schemas/{name}: {exc.message}")


def test_every_contract_has_a_publish_and_a_batch_operation(document: dict[str, Any]) -> None:
    paths = document["paths"]
    expected = {"/v1/tasks/{task_id}", "/livez", "/readyz"}
    for contract in REGISTRY:
        suffix = contract.name.replace(".", "_")
        publish = paths[f"/v1/tasks/{contract.name}"]["post"]
        batch = paths[f"/v1/tasks/{contract.name}/batch"]["post"]
        assert publish["operationId"] == f"publish_{suffix}"
        assert batch["operationId"] == f"publish_batch_{suffix}"
        assert publish["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{contract.name}"
        }
        batch_schema = _resolve(
            document, batch["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        )
        assert batch_schema["properties"]["payloads"]["items"] == {
            "$ref": f"#/components/schemas/{contract.name}"
        }
        assert batch_schema["properties"]["payloads"]["maxItems"] == 1000
        for operation in (publish, batch):
            assert operation["parameters"] == [{"$ref": "#/components/parameters/IdempotencyKey"}]
            codes = set(operation["responses"])
            assert codes == {"202", *map(str, (400, 401, 403, 404, 409, 413, 415, 422, 429, 503))}
        expected |= {f"/v1/tasks/{contract.name}", f"/v1/tasks/{contract.name}/batch"}
    assert set(paths) == expected
    assert len(paths) == 2 * len(REGISTRY) + 3
    assert paths["/v1/tasks/{task_id}"]["get"]["operationId"] == "get_task"
    assert paths["/livez"]["get"]["security"] == [] == paths["/readyz"]["get"]["security"]
    assert document["security"] == [{"bearerAuth": []}]
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A publisher's token, minted with `tasklane gateway token`.",
    }


def test_errors_are_problem_details_with_their_headers(document: dict[str, Any]) -> None:
    responses = document["components"]["responses"]
    for response in responses.values():
        assert response["content"] == {
            PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}
        }
    assert "WWW-Authenticate" in responses["Unauthorized"]["headers"]
    for name in ("RateLimited", "Unavailable"):
        assert responses[name]["headers"]["Retry-After"]["schema"] == {
            "type": "integer",
            "minimum": 1,
        }
    problem = _validator(document, "Problem")
    problem.validate(
        {
            "type": "https://tasklane.dev/problems/validation-failed",
            "title": "Payload is invalid",
            "status": 422,
            "detail": "1 problem",
            "errors": [{"pointer": "/to/0", "detail": "value is not a valid email address"}],
        }
    )
    assert not problem.is_valid({"type": "x", "status": 422})


def test_every_ref_resolves_and_no_defs_are_left(document: dict[str, Any]) -> None:
    refs = list(_refs(document))
    assert len(refs) > 100
    for where, ref in refs:
        assert ref.startswith(
            ("#/components/schemas/", "#/components/responses/", "#/components/parameters/")
        ), (where, ref)
        _resolve(document, ref)  # a KeyError names the broken ref
    assert "$defs" not in json.dumps(document)
    mapping = document["components"]["schemas"]["TaskStatus"]["discriminator"]["mapping"]
    for ref in mapping.values():
        _resolve(document, ref)


def test_payload_schemas_validate_what_the_contracts_take(document: dict[str, Any]) -> None:
    email = _validator(document, "notifier.email.send")
    email.validate({"to": ["ada@example.com"], "subject": "Hi", "text": "Hello"})
    assert not email.is_valid({"to": "ada@example.com", "subject": "Hi", "text": "Hello"})
    # A lifted $defs entry is reached through the rewritten ref.
    thumbnails = _validator(document, "media.image.thumbnail.result")
    image = {"output_uri": "file:///a.jpg", "width": 1, "height": 1, "format": "jpeg", "bytes": 9}
    thumbnails.validate({"thumbnails": [image]})
    assert not thumbnails.is_valid({"thumbnails": [{**image, "format": "gif"}]})


def test_the_status_is_a_union_discriminated_by_task(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    variants = schemas["TaskStatus"]["oneOf"]
    assert len(variants) == len(REGISTRY)
    assert schemas["TaskState"]["enum"] == list(TASK_STATES)
    assert {"PENDING", "STARTED", "SUCCESS", "FAILURE", "RETRY"} <= set(TASK_STATES)
    status = _validator(document, "TaskStatus")
    done = {
        "task_id": "0b6e",
        "task": "notifier.email.send",
        "state": "SUCCESS",
        "result": {"message_id": "<1@x>", "accepted": ["ada@example.com"]},
        "error": None,
        "dead_letter_reason": None,
    }
    status.validate(done)
    status.validate({**done, "state": "PENDING", "result": None})
    status.validate(
        {
            **done,
            "state": "FAILURE",
            "result": None,
            "error": {"type": "SMTPRecipientsRefused", "message": "refused"},
            "dead_letter_reason": "permanent: refused",
        }
    )
    # Another task's result does not pass as this task's.
    assert not status.is_valid({**done, "task": "notifier.im.send"})
    assert not status.is_valid({**done, "state": "DONE"})


def test_a_defs_name_with_two_meanings_is_qualified_per_contract() -> None:
    class FieldSelector(BaseModel):
        tag: str

    class ClashPayload(Payload):
        selectors: list[FieldSelector]

    clash = TaskContract(
        name="scraper.clash.fetch", queue="scraper.clash", payload=ClashPayload, result=Result
    )
    document = openapi_document(REGISTRY.extended(clash))
    schemas = document["components"]["schemas"]
    assert "FieldSelector" not in schemas
    assert schemas["scraper.clash.fetch.FieldSelector"]["properties"] == {
        "tag": {"title": "Tag", "type": "string"}
    }
    # Both scraper contracts that share the original agree, so they share one component.
    original = "scraper.page.fetch.FieldSelector"
    for name in ("scraper.page.fetch", "scraper.site.crawl"):
        assert original in json.dumps(schemas[name])
    assert "scraper.site.crawl.FieldSelector" not in schemas
    assert (
        json.dumps(schemas["scraper.clash.fetch"]).count("scraper.clash.fetch.FieldSelector") == 1
    )
    for _, ref in _refs(document):
        _resolve(document, ref)


def test_the_document_is_deterministic(tmp_path: Path) -> None:
    assert json.dumps(openapi_document()) == json.dumps(openapi_document())
    # Set and dict order must not depend on string hashing: two interpreters, two hash seeds.
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"openapi-{seed}.json"
        subprocess.run(
            [sys.executable, "-c", CLI, "contracts", "export", "--openapi", str(out)],
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
        )
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    paths = list(json.loads(outputs[0])["paths"])
    assert paths == sorted(paths)


def test_contracts_export_openapi_writes_the_document(tmp_path: Path) -> None:
    out = tmp_path / "client" / "openapi.json"
    result = CliRunner().invoke(app, ["contracts", "export", "--openapi", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    text = out.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert json.loads(text) == openapi_document()
    assert not (tmp_path / "contracts").exists()
