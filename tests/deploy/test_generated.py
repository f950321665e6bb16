"""Files generated from the repository (contracts, alerts, dashboards, schema, docs, manifests)."""

from __future__ import annotations

import json
from typing import Any

import yaml

from tasklane.contracts import REGISTRY
from tasklane.contracts.ping import is_ping
from tests.deploy.conftest import CHART, load_generator


def test_generated_files_are_current() -> None:
    # The drift check `make lint` runs: regenerate with `make manifests` when this fails.
    assert load_generator().stale() == []


def test_contract_data_names_every_queue_with_its_longest_hard_limit(
    contracts: dict[str, Any],
) -> None:
    expected: dict[str, float] = {}
    for contract in REGISTRY:
        if not is_ping(contract):
            expected[contract.queue] = max(expected.get(contract.queue, 0.0), contract.time_limit)
    assert {q: e["timeLimit"] for q, e in contracts["queues"].items()} == expected
    assert contracts["queues"]["media.video"]["timeLimit"] == 3660.0
    assert {q: e["ping"] for q, e in contracts["queues"].items()} == {
        q: f"{q}.ping" for q in expected
    }
    for service, queues in contracts["services"].items():
        assert queues == sorted({c.queue for c in REGISTRY.for_service(service)})


def _walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child in node.get("properties", {}).items():
        found += _walk(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        found += _walk(node["additionalProperties"], f"{path}.<name>")
    if isinstance(node.get("items"), dict):
        found += _walk(node["items"], f"{path}[]")
    return found


def test_schema_closes_every_object_and_describes_every_key() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text("utf-8"))
    nodes = _walk(schema, "")
    assert len(nodes) > 200
    for path, node in nodes:
        if "properties" in node:
            assert node["additionalProperties"] is False, path
        if path.count(".") and not path.endswith(("[]", "<name>")):
            assert node.get("description"), path
    values = yaml.safe_load((CHART / "values.yaml").read_text("utf-8"))

    removed: list[str] = []

    def defaults(node: dict[str, Any], value: Any, path: str) -> None:
        assert node.get("default") == value, path
        for name, child in node.get("properties", {}).items():
            if path.endswith("pools"):
                continue
            if name not in value:
                removed.append(f"{path}.{name}")
                continue
            defaults(child, value[name], f"{path}.{name}")

    defaults({**schema, "default": values}, values, "")
    # Keys only in the schema are removed ones, kept so the chart can refuse them by name.
    assert sorted(removed) == [".celeryExporter", ".images.celeryExporter"]
    for path in removed:
        node = schema
        for step in path.strip(".").split("."):
            node = node["properties"][step]
        assert node["description"].startswith("Removed"), path
        assert "default" not in node, path


def test_every_values_key_has_a_comment_above_it() -> None:
    generate = load_generator()
    text = (CHART / "values.yaml").read_text("utf-8")
    comments = generate.values_comments(text)
    values = yaml.safe_load(text)

    def keys(node: dict[str, Any], prefix: str) -> list[str]:
        found = []
        for name, child in node.items():
            found.append(f"{prefix}{name}")
            if isinstance(child, dict):
                found += keys(child, f"{prefix}{name}.")
        return found

    # Keys inside list items (Kubernetes objects given as examples) are data, not values keys.
    every = keys(values, "")
    assert len(every) > 150
    assert [key for key in every if not comments.get(key)] == []


def test_docs_reference_lists_every_pool_key() -> None:
    docs = (CHART.parents[2] / "docs" / "deploy.md").read_text("utf-8")
    for key in ("workers.pools.<name>.queues", "workers.pools.<name>.terminationGracePeriodSeconds",
                "autoscaling.keda.rabbitmq.protocol", "beat.replicas"):  # fmt: skip
        assert f"`{key}`" in docs
