"""The chart rendered once per values file per session, with its objects parsed."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "tasklane"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
#: "default" plus every example values file; each is rendered once per session.
VALUES_NAMES = ["default", *(path.stem for path in CI_VALUES)]
RELEASE = NAMESPACE = "tasklane"


def values_of(name: str) -> dict[str, Any]:
    """The values a name stands for: {} for "default", else the ci/ file."""
    if name == "default":
        return {}
    loaded: dict[str, Any] = yaml.safe_load((CHART / "ci" / f"{name}.yaml").read_text("utf-8"))
    return loaded


@dataclass(frozen=True)
class Rendered:
    """One render: the values given, the merged values and every object by template."""

    name: str
    values: dict[str, Any]
    merged: dict[str, Any]
    by_template: dict[str, list[dict[str, Any]]]

    @property
    def objects(self) -> list[dict[str, Any]]:
        return [obj for objects in self.by_template.values() for obj in objects]

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        (found,) = [obj for obj in self.kind(kind) if obj["metadata"]["name"] == name]
        return found

    def pools(self) -> dict[str, dict[str, Any]]:
        """Worker Deployments by pool name (label tasklane.io/pool)."""
        return {
            obj["metadata"]["labels"]["tasklane.io/pool"]: obj
            for obj in self.kind("Deployment")
            if "tasklane.io/pool" in obj["metadata"]["labels"]
        }


@pytest.fixture(scope="session")
def chart() -> Any:
    import helm_python

    return helm_python.Chart.load(CHART)


def render(chart: Any, values: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every object the chart renders for ``values``, by template path."""
    manifests: dict[str, str] = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    by_template: dict[str, list[dict[str, Any]]] = {}
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        documents = [doc for doc in yaml.safe_load_all(text) if doc]
        if documents:
            by_template[path] = documents
    return by_template


_CACHE: dict[str, Rendered] = {}


@pytest.fixture(params=VALUES_NAMES)
def rendered(request: pytest.FixtureRequest, chart: Any) -> Rendered:
    """The chart rendered with the default values and with each ci/ file (cached per session)."""
    name: str = request.param
    if name not in _CACHE:
        values = values_of(name)
        _CACHE[name] = Rendered(name, values, chart.merge_values(values), render(chart, values))
    return _CACHE[name]


@pytest.fixture(scope="session")
def contracts() -> dict[str, Any]:
    """The chart's generated contract data (files/contracts.json)."""
    import json

    loaded: dict[str, Any] = json.loads((CHART / "files" / "contracts.json").read_text("utf-8"))
    return loaded


def load_generator() -> ModuleType:
    """deploy/helm/generate.py as a module (it is a script, not a package)."""
    path = ROOT / "deploy" / "helm" / "generate.py"
    spec = importlib.util.spec_from_file_location("tasklane_chart_generate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
