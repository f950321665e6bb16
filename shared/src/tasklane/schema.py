"""JSON Schema documents of task contracts, for publishers that are not written in Python."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasklane.contracts import ContractRegistry, TaskContract
from tasklane.wire.routing import dlq_name

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: Key of the Tasklane routing and policy block added to every payload schema.
EXTENSION_KEY = "x-tasklane"
RESULT_SUFFIX = ".result"


def tasklane_extension(contract: TaskContract[Any, Any]) -> dict[str, Any]:
    """The routing and run-time policy of one contract, as JSON values.

    Queue names are the un-namespaced ones: the namespace is a deployment setting, not part of
    the contract.
    """
    return {
        "task": contract.name,
        "queue": contract.queue,
        "dead_letter_queue": dlq_name(contract.queue),
        "priority": contract.priority,
        "soft_time_limit": contract.soft_time_limit,
        "time_limit": contract.time_limit,
        "rate_limit": contract.rate_limit,
        "max_retries": contract.retry.max_retries,
        "idempotency_key": list(contract.idempotency_key),
    }


def _document(
    base: dict[str, Any], title: str, description: str, extension: dict[str, Any]
) -> dict[str, Any]:
    # The header keys come first so a reader sees what the file is before the properties.
    rest = {k: v for k, v in base.items() if k not in ("title", "description")}
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": title,
        "description": description,
        EXTENSION_KEY: extension,
        **rest,
    }


def contract_schemas(contract: TaskContract[Any, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The payload and result JSON Schemas of one contract.

    Args:
        contract: the task contract.

    Returns:
        ``(payload_schema, result_schema)``: each model's ``model_json_schema()`` with
        ``$schema``, ``title``, ``description`` and the ``x-tasklane`` block added.
    """
    payload_base = contract.payload.model_json_schema()
    payload = _document(
        payload_base,
        contract.name,
        contract.description or str(payload_base.get("description", "")),
        tasklane_extension(contract),
    )
    result_base = contract.result.model_json_schema()
    result = _document(
        result_base,
        f"{contract.name}{RESULT_SUFFIX}",
        str(result_base.get("description", "")),
        {"task": contract.name},
    )
    return payload, result


def schema_paths(contract: TaskContract[Any, Any], directory: Path) -> tuple[Path, Path]:
    """Where :func:`export_schemas` writes the payload and result schemas of ``contract``."""
    return (
        directory / f"{contract.name}.json",
        directory / f"{contract.name}{RESULT_SUFFIX}.json",
    )


def export_schemas(registry: ContractRegistry, directory: Path) -> list[Path]:
    """Write ``<name>.json`` and ``<name>.result.json`` for every contract of ``registry``.

    Args:
        registry: the contracts to export.
        directory: target directory, created when missing; existing files are overwritten.

    Returns:
        The written paths, payload schema before result schema, in contract name order.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for contract in registry:
        for path, document in zip(
            schema_paths(contract, directory), contract_schemas(contract), strict=True
        ):
            path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
            written.append(path)
    return written
