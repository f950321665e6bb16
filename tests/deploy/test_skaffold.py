"""skaffold.yaml: valid against Skaffold's published schema, building and deploying every image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import pytest
import yaml

from tests.deploy.conftest import ROOT

SCHEMA = Path(__file__).parent / "schemas" / "skaffold-v4beta14.json"


@pytest.fixture(scope="module")
def skaffold() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "skaffold.yaml").read_text("utf-8"))
    return loaded


def test_skaffold_yaml_meets_the_v4beta14_schema(skaffold: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text("utf-8"))
    assert skaffold["apiVersion"] == "skaffold/v4beta14"
    jsonschema.Draft7Validator(schema).validate(skaffold)


def test_every_image_is_built_from_the_workspace_root(skaffold: dict[str, Any]) -> None:
    artifacts = {a["image"]: a for a in skaffold["build"]["artifacts"]}
    assert artifacts["tasklane"]["docker"]["dockerfile"] == "shared/Dockerfile"
    for service in ("notifier", "scraper", "media"):
        artifact = artifacts[f"tasklane-{service}"]
        assert artifact["docker"]["dockerfile"] == f"services/{service}/Dockerfile"
    assert {a["context"] for a in artifacts.values()} == {"."}


def test_the_chart_gets_every_built_image(skaffold: dict[str, Any]) -> None:
    (release,) = skaffold["deploy"]["helm"]["releases"]
    assert (ROOT / release["chartPath"] / "Chart.yaml").exists()
    templates = release["setValueTemplates"]
    for key, image in (("tasklane", "tasklane"), ("notifier", "tasklane_notifier"),
                       ("scraper", "tasklane_scraper"), ("media", "tasklane_media")):  # fmt: skip
        assert templates[f"images.{key}.repository"] == f"{{{{.IMAGE_REPO_{image}}}}}"
        assert f".IMAGE_TAG_{image}" in templates[f"images.{key}.tag"]
    assert {p["name"] for p in skaffold["profiles"]} == {"redis", "rabbitmq"}
