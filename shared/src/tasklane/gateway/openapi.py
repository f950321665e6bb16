"""The gateway's OpenAPI 3.1 document, built from the task contracts' JSON Schemas.

One publish and one batch operation per contract, the task status read and the health probes;
served at ``/openapi.json`` and written by ``tasklane contracts export --openapi``. See
docs/gateway.md.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator
from typing import Any

from celery import states

from tasklane.contracts import REGISTRY, ContractRegistry, TaskContract
from tasklane.schema import EXTENSION_KEY, RESULT_SUFFIX, contract_schemas

OPENAPI_VERSION = "3.1.0"
#: The API's version (the ``/v1`` of its paths), not the package's: a release that changes no
#: contract leaves the checked-in document and the generated clients as they are.
API_VERSION = "1.0.0"
#: The gateway's default ``max_batch``; the served document states the configured one.
DEFAULT_MAX_BATCH = 1000
PROBLEM_TYPE_BASE = "https://tasklane.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"
#: Every state the result backend can report (Celery's, plus the two it leaves out of ALL_STATES).
TASK_STATES = tuple(sorted(states.ALL_STATES | {states.REJECTED, states.IGNORED}))
STATUS_SUFFIX = ".status"
BATCH_SUFFIX = ".batch"

_DEFS_REF = "#/$defs/"
_SCHEMAS_REF = "#/components/schemas/"

#: Error responses by status: component name, description, problem type slugs.
_ERRORS: dict[int, tuple[str, str, tuple[str, ...]]] = {
    400: (
        "BadRequest",
        "The body is not JSON, not an object, or the Idempotency-Key header is malformed.",
        ("invalid-json", "invalid-idempotency-key"),
    ),
    401: ("Unauthorized", "No bearer token, or one the gateway does not know.", ("unauthorized",)),
    403: ("Forbidden", "The token may not publish or read this contract.", ("forbidden",)),
    404: ("NotFound", "No such task type, or no such task id.", ("unknown-task", "not-found")),
    409: (
        "Conflict",
        "The first request with this Idempotency-Key is still being answered.",
        ("idempotency-key-in-flight",),
    ),
    413: (
        "PayloadTooLarge",
        "The body is larger than the gateway accepts.",
        ("payload-too-large",),
    ),
    415: (
        "UnsupportedMediaType",
        "The Content-Type is not application/json.",
        ("unsupported-media-type",),
    ),
    422: (
        "ValidationFailed",
        "The payload breaks its contract (``errors`` points at each field), or the "
        "Idempotency-Key was used before with a different body.",
        ("validation-failed", "idempotency-key-reused"),
    ),
    429: (
        "RateLimited",
        "The publisher's rate limit is spent; retry after Retry-After seconds.",
        ("rate-limited",),
    ),
    503: (
        "Unavailable",
        "The broker or the gateway's Redis did not answer in time; retry after Retry-After "
        "seconds.",
        ("broker-unavailable", "state-unavailable"),
    ),
}
_PUBLISH_ERRORS = (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
_READ_ERRORS = (401, 403, 404, 503)
_REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored answer to an earlier request with the key.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}
_RETRY_AFTER = {
    "description": "Seconds to wait before retrying (an integer, at least 1).",
    "schema": {"type": "integer", "minimum": 1},
}


def openapi_document(
    registry: ContractRegistry = REGISTRY, *, max_batch: int = DEFAULT_MAX_BATCH
) -> dict[str, Any]:
    """The gateway's OpenAPI 3.1 document for the contracts of ``registry``.

    Args:
        registry: the contracts to describe, one publish and one batch operation each.
        max_batch: the most payloads a batch request may carry.

    Returns:
        A JSON-ready dict; the same contracts give an equal dict with the same key order, so a
        checked-in copy can be compared with a fresh one.
    """
    contracts = list(registry)
    schemas = _contract_components(contracts, max_batch)
    schemas.update(_fixed_schemas(contracts))
    paths: dict[str, Any] = {}
    for contract in contracts:
        paths[f"/v1/tasks/{contract.name}"] = {"post": _publish_operation(contract)}
        paths[f"/v1/tasks/{contract.name}/batch"] = {"post": _batch_operation(contract, max_batch)}
    paths["/v1/tasks/{task_id}"] = {"get": _get_task_operation()}
    paths["/livez"] = {"get": _probe_operation("livez", "The process is serving.", live=True)}
    paths["/readyz"] = {
        "get": _probe_operation(
            "readyz", "Redis and the broker answered in the last check.", live=False
        )
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Tasklane gateway",
            "version": API_VERSION,
            "description": (
                "Publish Tasklane tasks over HTTP: each task contract's payload is validated "
                "against its JSON Schema, published to its queue, and its state and result are "
                "read back by task id. Errors are RFC 9457 problem details."
            ),
        },
        "tags": [
            {"name": service, "description": f"Tasks of the {service} service."}
            for service in sorted({c.service for c in contracts})
        ]
        + [
            {"name": "tasks", "description": "Task state and results."},
            {"name": "health", "description": "Probes for the orchestrator."},
        ],
        "security": [{"bearerAuth": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "parameters": {"IdempotencyKey": _idempotency_key_parameter()},
            "responses": {name: _error_response(status) for status, (name, *_) in _ERRORS.items()},
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A publisher's token, minted with `tasklane gateway token`.",
                }
            },
        },
    }


# --------------------------------------------------------------------------- schemas


def _contract_components(
    contracts: Iterable[TaskContract[Any, Any]], max_batch: int
) -> dict[str, Any]:
    """Payload, result, batch and status schemas per contract, their ``$defs`` lifted beside them.

    A ``$defs`` name used by several contracts stays as it is when all agree on its schema;
    otherwise each variant is qualified with the first schema that holds it
    (``scraper.page.fetch.FieldSelector``), so no contract's type changes under another's name.
    """
    owned: dict[str, dict[str, Any]] = {}
    for contract in contracts:
        payload, result = contract_schemas(contract)
        owned[contract.name] = payload
        owned[f"{contract.name}{RESULT_SUFFIX}"] = result
    renames = _def_names(owned)
    schemas: dict[str, Any] = {}
    for owner, schema in owned.items():
        schema = copy.deepcopy(schema)
        schema.pop("$schema", None)  # the document's dialect (2020-12) applies to every schema
        for name, definition in schema.pop("$defs", {}).items():
            schemas[renames[owner, name]] = _rewrite_refs(definition, owner, renames)
        schemas[owner] = _rewrite_refs(schema, owner, renames)
    for contract in contracts:
        schemas[f"{contract.name}{BATCH_SUFFIX}"] = _batch_schema(contract, max_batch)
        schemas[f"{contract.name}{STATUS_SUFFIX}"] = _status_schema(contract)
    return schemas


def _def_names(owned: dict[str, dict[str, Any]]) -> dict[tuple[str, str], str]:
    """The component name of each ``(owner, $defs name)``."""
    variants: dict[str, dict[str, list[str]]] = {}
    for owner, schema in owned.items():
        for name, definition in schema.get("$defs", {}).items():
            canonical = json.dumps(definition, sort_keys=True)
            variants.setdefault(name, {}).setdefault(canonical, []).append(owner)
    reserved = set(owned) | set(_FIXED_NAMES)
    renames: dict[tuple[str, str], str] = {}
    for name, by_schema in variants.items():
        unique = len(by_schema) == 1 and name not in reserved
        for owners in by_schema.values():
            component = name if unique else f"{min(owners)}.{name}"
            renames.update({(owner, name): component for owner in owners})
    return renames


def _rewrite_refs(node: Any, owner: str, renames: dict[tuple[str, str], str]) -> Any:
    """``node`` with every ``#/$defs/X`` reference pointed at X's component."""
    if isinstance(node, list):
        return [_rewrite_refs(item, owner, renames) for item in node]
    if not isinstance(node, dict):
        return node
    rewritten = {key: _rewrite_refs(value, owner, renames) for key, value in node.items()}
    ref = node.get("$ref")
    if isinstance(ref, str):
        if not ref.startswith(_DEFS_REF):
            raise ValueError(f"{owner}: unexpected $ref {ref!r} (only {_DEFS_REF}... is lifted)")
        rewritten["$ref"] = _ref(renames[owner, ref.removeprefix(_DEFS_REF)])
    return rewritten


def _ref(component: str) -> str:
    return f"{_SCHEMAS_REF}{component}"


def _schema_ref(component: str) -> dict[str, str]:
    return {"$ref": _ref(component)}


def _batch_schema(contract: TaskContract[Any, Any], max_batch: int) -> dict[str, Any]:
    return {
        "title": f"{contract.name}{BATCH_SUFFIX}",
        "description": f"Up to {max_batch} {contract.name} payloads, published if all are valid.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "payloads": {
                "type": "array",
                "items": _schema_ref(contract.name),
                "minItems": 1,
                "maxItems": max_batch,
            }
        },
        "required": ["payloads"],
    }


def _status_schema(contract: TaskContract[Any, Any]) -> dict[str, Any]:
    """One task's status with its own result type, so a typed client narrows on ``task``."""
    return {
        "title": f"{contract.name}{STATUS_SUFFIX}",
        "description": f"State of one {contract.name} task.",
        "type": "object",
        "properties": {
            "task_id": {"type": "string"},
            "task": {"type": "string", "const": contract.name},
            "state": _schema_ref("TaskState"),
            "result": {
                "description": "The task's result when its state is SUCCESS, otherwise null.",
                "oneOf": [_schema_ref(f"{contract.name}{RESULT_SUFFIX}"), {"type": "null"}],
            },
            "error": {
                "description": "Why the task failed when its state is FAILURE, otherwise null.",
                "oneOf": [_schema_ref("TaskError"), {"type": "null"}],
            },
            "dead_letter_reason": {
                "description": "Why the worker dead-lettered the task, when it did.",
                "type": ["string", "null"],
            },
        },
        "required": ["task_id", "task", "state", "result", "error", "dead_letter_reason"],
    }


_FIXED_NAMES = (
    "Accepted",
    "BatchAccepted",
    "Problem",
    "ProblemError",
    "TaskError",
    "TaskState",
    "TaskStatus",
)


def _fixed_schemas(contracts: list[TaskContract[Any, Any]]) -> dict[str, Any]:
    """The schemas that do not depend on one contract (the status union lists them all)."""
    slugs = sorted({slug for _, _, group in _ERRORS.values() for slug in group})
    task_names = [contract.name for contract in contracts]
    fixed = {
        "Accepted": {
            "description": "The task was published.",
            "type": "object",
            "properties": {
                "task_id": {"type": "string"},
                "task": {"type": "string", "enum": task_names},
                "status_url": {
                    "type": "string",
                    "format": "uri-reference",
                    "description": "Where to read the task's state: /v1/tasks/{task_id}.",
                },
            },
            "required": ["task_id", "task", "status_url"],
        },
        "BatchAccepted": {
            "description": "Every payload of the batch was published, task ids in payload order.",
            "type": "object",
            "properties": {
                "task": {"type": "string", "enum": task_names},
                "task_ids": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["task", "task_ids"],
        },
        "Problem": {
            "description": "RFC 9457 problem details.",
            "type": "object",
            "properties": {
                "type": {
                    "type": "string",
                    "format": "uri",
                    "description": "One of: "
                    + ", ".join(f"{PROBLEM_TYPE_BASE}{slug}" for slug in slugs)
                    + ".",
                },
                "title": {"type": "string"},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": {"type": "string"},
                "instance": {"type": "string"},
                "errors": {
                    "description": "Each field's problem (validation-failed only).",
                    "type": "array",
                    "items": _schema_ref("ProblemError"),
                },
            },
            "required": ["type", "title", "status"],
        },
        "ProblemError": {
            "description": "One field's problem.",
            "type": "object",
            "properties": {
                "pointer": {
                    "type": "string",
                    "description": "JSON Pointer into the request body: /to/0, /payloads/3/to/0.",
                },
                "detail": {"type": "string"},
            },
            "required": ["pointer", "detail"],
        },
        "TaskError": {
            "description": "The exception a failed task raised.",
            "type": "object",
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
            "required": ["type", "message"],
        },
        "TaskState": {
            "description": "Celery's name for the task's state (PENDING also for unknown ids).",
            "type": "string",
            "enum": list(TASK_STATES),
        },
        "TaskStatus": {
            "description": "State, result, error and dead-letter reason of one task.",
            "oneOf": [_schema_ref(f"{name}{STATUS_SUFFIX}") for name in task_names],
            "discriminator": {
                "propertyName": "task",
                "mapping": {name: _ref(f"{name}{STATUS_SUFFIX}") for name in task_names},
            },
        },
    }
    assert set(fixed) == set(_FIXED_NAMES)
    return fixed


# --------------------------------------------------------------------------- operations


def _operation_id(prefix: str, contract: TaskContract[Any, Any]) -> str:
    return f"{prefix}_{contract.name.replace('.', '_')}"


def _summary(contract: TaskContract[Any, Any]) -> str:
    return contract.description.strip().splitlines()[0] if contract.description else contract.name


def _errors(statuses: Iterable[int]) -> Iterator[tuple[str, dict[str, str]]]:
    for status in statuses:
        yield str(status), {"$ref": f"#/components/responses/{_ERRORS[status][0]}"}


def _publish_operation(contract: TaskContract[Any, Any]) -> dict[str, Any]:
    extension = contract_schemas(contract)[0][EXTENSION_KEY]
    return {
        "operationId": _operation_id("publish", contract),
        "summary": _summary(contract),
        "description": (
            f"Validate one {contract.name} payload and publish it to the `{contract.queue}` queue."
        ),
        "tags": [contract.service],
        "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _schema_ref(contract.name)}},
        },
        "responses": {
            "202": {
                "description": "Published; the task's state is at status_url.",
                "headers": {
                    "Location": {
                        "description": "The task's status URL.",
                        "schema": {"type": "string", "format": "uri-reference"},
                    },
                    **_REPLAYED,
                },
                "content": {"application/json": {"schema": _schema_ref("Accepted")}},
            },
            **dict(_errors(_PUBLISH_ERRORS)),
        },
        EXTENSION_KEY: extension,
    }


def _batch_operation(contract: TaskContract[Any, Any], max_batch: int) -> dict[str, Any]:
    return {
        "operationId": _operation_id("publish_batch", contract),
        "summary": f"Publish up to {max_batch} {contract.name} tasks",
        "description": (
            "Every payload is validated first; if one is invalid nothing is published and the "
            "422 names each problem by index (/payloads/3/to/0). The rate limit is charged per "
            "payload."
        ),
        "tags": [contract.service],
        "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _schema_ref(f"{contract.name}{BATCH_SUFFIX}")}
            },
        },
        "responses": {
            "202": {
                "description": "Every payload was published.",
                "headers": _REPLAYED,
                "content": {"application/json": {"schema": _schema_ref("BatchAccepted")}},
            },
            **dict(_errors(_PUBLISH_ERRORS)),
        },
    }


def _get_task_operation() -> dict[str, Any]:
    return {
        "operationId": "get_task",
        "summary": "Read a task's state, result, error and dead-letter reason",
        "description": (
            "A token may read the tasks of the contracts it may publish. 404 when the gateway "
            "never published the id and the result backend knows nothing of it."
        ),
        "tags": ["tasks"],
        "parameters": [
            {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
        "responses": {
            "200": {
                "description": "The task's status; `task` tells which result type `result` has.",
                "content": {"application/json": {"schema": _schema_ref("TaskStatus")}},
            },
            **dict(_errors(_READ_ERRORS)),
        },
    }


def _probe_operation(name: str, description: str, *, live: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {"status": {"type": "string"}}
    if live:
        responses: dict[str, Any] = {"200": _probe_response(description, properties)}
    else:
        properties["status"] = {"type": "string", "enum": ["ready", "unavailable", "draining"]}
        properties |= {"redis": {"type": "boolean"}, "broker": {"type": "boolean"}}
        responses = {
            "200": _probe_response(description, properties),
            "503": _probe_response(
                "Not ready: Redis or the broker failed the last check, or shutdown began.",
                properties,
            ),
        }
    return {
        "operationId": name,
        "summary": "Liveness probe" if live else "Readiness probe",
        "tags": ["health"],
        "security": [],
        "responses": responses,
    }


def _probe_response(description: str, properties: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": sorted(properties)}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _idempotency_key_parameter() -> dict[str, Any]:
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": (
            "draft-ietf-httpapi-idempotency-key-header: a retry with the same key and body within "
            "the gateway's window answers the first response again and publishes nothing; the "
            "same key with another body is refused (422 idempotency-key-reused); while the first "
            "request is in flight, 409."
        ),
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": 255,
            "pattern": "^[\\x20-\\x7e]+$",
        },
    }


def _error_response(status: int) -> dict[str, Any]:
    _, description, slugs = _ERRORS[status]
    response: dict[str, Any] = {
        "description": f"{description} Problem types: {', '.join(slugs)}.",
        "content": {PROBLEM_MEDIA_TYPE: {"schema": _schema_ref("Problem")}},
    }
    if status == 401:
        response["headers"] = {
            "WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}
        }
    elif status in (429, 503):
        response["headers"] = {"Retry-After": _RETRY_AFTER}
    return response
