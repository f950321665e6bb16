"""skaffold.yaml: valid against Skaffold's schema, building every image; each profile renders."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
    assert artifacts["tasklane"]["docker"] == {"dockerfile": "shared/Dockerfile"}
    # The worker images: one Dockerfile, the service named by the build argument it declares.
    for service in ("notifier", "scraper", "media"):
        artifact = artifacts[f"tasklane-{service}"]
        assert artifact["docker"] == {
            "dockerfile": "services/Dockerfile",
            "buildArgs": {"SERVICE": service},
        }
    assert {a["context"] for a in artifacts.values()} == {"."}
    # Each is the recipe tests/deploy/test_images.py rebuilds and runs.
    from tests.deploy.test_images import IMAGES

    for name, recipe in IMAGES.items():
        docker = artifacts["tasklane" if name == "tasklane" else f"tasklane-{name}"]["docker"]
        assert ROOT / docker["dockerfile"] == recipe.dockerfile
        assert docker.get("buildArgs", {}) == recipe.build_args


def test_the_chart_gets_every_built_image(skaffold: dict[str, Any]) -> None:
    (release,) = skaffold["deploy"]["helm"]["releases"]
    assert (ROOT / release["chartPath"] / "Chart.yaml").exists()
    templates = release["setValueTemplates"]
    for key, image in (("tasklane", "tasklane"), ("notifier", "tasklane_notifier"),
                       ("scraper", "tasklane_scraper"), ("media", "tasklane_media")):  # fmt: skip
        assert templates[f"images.{key}.repository"] == f"{{{{.IMAGE_REPO_{image}}}}}"
        assert f".IMAGE_TAG_{image}" in templates[f"images.{key}.tag"]
    assert {p["name"] for p in skaffold["profiles"]} == {"redis", "rabbitmq"}


# ----------------------------------------------------------------------------- profiles rendered

#: What Skaffold puts into setValueTemplates for the images it built.
BUILT = {
    f"IMAGE_{part}_{name}": value
    for name in ("tasklane", "tasklane_notifier", "tasklane_scraper", "tasklane_media")
    for part, value in (
        ("REPO", f"registry.local/{name.replace('_', '-')}"),
        ("TAG", "dev-1a2b3c"),
        ("DIGEST", "sha256:" + "0123456789abcdef" * 4),
    )
}


def _merge(into: dict[str, Any], values: dict[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _patched(config: dict[str, Any], profile: str) -> dict[str, Any]:
    """The skaffold config with a profile's JSON patches applied (only `add` is used here)."""
    patched = copy.deepcopy(config)
    (wanted,) = [p for p in config["profiles"] if p["name"] == profile]
    for patch in wanted["patches"]:
        assert patch["op"] == "add", patch
        *parents, last = patch["path"].strip("/").split("/")
        node: Any = patched
        for step in parents:
            node = node[int(step)] if isinstance(node, list) else node[step]
        node[last] = copy.deepcopy(patch["value"])
    return patched


def profile_values(config: dict[str, Any], profile: str) -> dict[str, Any]:
    """The values `skaffold deploy -p <profile>` gives Helm: the values files, then one `--set`
    per setValues and per expanded setValueTemplates entry, each in key order (as skaffold's
    helm deployer builds its arguments)."""
    import helm_python

    (release,) = _patched(config, profile)["deploy"]["helm"]["releases"]
    values: dict[str, Any] = {}
    for path in release.get("valuesFiles", []):
        _merge(values, yaml.safe_load((ROOT / path).read_text("utf-8")))
    settings = dict(sorted(release.get("setValues", {}).items()))
    for key, template in sorted(release.get("setValueTemplates", {}).items()):
        settings[key] = re.sub(r"\{\{\s*\.(\w+)\s*\}\}", lambda m: BUILT[m[1]], template)
    for key, value in settings.items():
        _merge(values, helm_python.parse_set_string(f"{key}={value}"))
    return values


def _secret_keys(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {
        o["metadata"]["name"]: o.get("stringData", {}) for o in objects if o["kind"] == "Secret"
    }


@pytest.mark.parametrize("profile", ["redis", "rabbitmq"])
def test_each_profile_renders_a_complete_install(skaffold: dict[str, Any], profile: str) -> None:
    import helm_python

    from tests.deploy.conftest import CHART, NAMESPACE, RELEASE, render
    from tests.deploy.validate import validate_object

    (release,) = skaffold["deploy"]["helm"]["releases"]
    assert (release["name"], release["namespace"]) == (RELEASE, NAMESPACE)
    values = profile_values(skaffold, profile)
    assert values["broker"]["kind"] == profile
    chart = helm_python.Chart.load(CHART)
    chart.validate_schema(values)
    report = helm_python.lint(CHART, values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 1] == []
    objects = [o for objs in render(chart, values).values() for o in objs]
    for obj in objects:
        validate_object(obj)

    # Nothing to create by hand first: every Secret a pod or KEDA reads is rendered with its key.
    secrets = _secret_keys(objects)
    for obj in objects:
        if obj["kind"] not in ("Deployment", "Pod"):
            continue
        spec = obj["spec"]["template"]["spec"] if obj["kind"] == "Deployment" else obj["spec"]
        for container in spec["containers"]:
            # Every image is the one Skaffold built, by tag and digest.
            repository = container["image"].split(":", 1)[0]
            assert repository in {v for k, v in BUILT.items() if k.startswith("IMAGE_REPO_")}
            assert container["image"].endswith(f":dev-1a2b3c@sha256:{'0123456789abcdef' * 4}")
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    assert secrets[ref["name"]].get(ref["key"]), (obj["metadata"]["name"], ref)

    scaled = [o for o in objects if o["kind"] == "ScaledObject"]
    assert scaled and all(t["type"] == profile for s in scaled for t in s["spec"]["triggers"])
    (auth,) = [o for o in objects if o["kind"] == "TriggerAuthentication"]
    params = {
        ref["parameter"]: secrets[ref["name"]][ref["key"]]
        for ref in auth["spec"]["secretTargetRef"]
    }
    broker_url = secrets[f"{RELEASE}-broker"]["broker-url"]
    if profile == "redis":
        # KEDA's address is the broker's host:port; databaseIndex is the broker URL's database.
        parsed = urlsplit(broker_url)
        assert parsed.scheme == "redis" and params["address"] == parsed.netloc
        for trigger in (t for s in scaled for t in s["spec"]["triggers"]):
            assert trigger["metadata"]["databaseIndex"] == parsed.path.strip("/")
    else:
        # protocol http needs the management URL, on the broker's host.
        host = urlsplit(params["host"])
        assert host.scheme == "http" and host.port == 15672
        assert host.hostname == urlsplit(broker_url).hostname
        assert urlsplit(broker_url).scheme == "amqp"
        assert all(
            t["metadata"]["protocol"] == "http" for s in scaled for t in s["spec"]["triggers"]
        )
        assert urlsplit(secrets[f"{RELEASE}-broker"]["result-backend"]).scheme == "redis"
