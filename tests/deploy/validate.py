"""Rendered objects judged as the API server's strict field validation judges them.

`kubectl apply --validate=strict` refuses a field the kind's schema does not know. Built-in kinds
are checked against kubernetes-validate's strict schemas (every object closed); custom kinds
against the vendored CRDs in ``crds/``, whose openAPIV3 schemas close nothing by themselves: the
API server treats a schema node with ``properties`` as closed unless it has
``additionalProperties`` or ``x-kubernetes-preserve-unknown-fields: true``, and so does
:func:`closed`.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import kubernetes_validate  # type: ignore[import-untyped]
import yaml

CRDS = Path(__file__).parent / "crds"
KUBERNETES_VERSIONS = ["1.29", kubernetes_validate.utils.latest_version().rsplit(".", 1)[0]]
CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


@cache
def kubernetes_validator(version: str, api_version: str, kind: str) -> Any:
    """kubernetes-validate's strict validator of one built-in kind, built once.

    ``kubernetes_validate.validate()`` reloads the 5 MB definitions file on every call; this builds
    the same strict Draft 2020-12 validator from its schema files once per kind and version.
    """
    from referencing import Registry, Resource

    utils = kubernetes_validate.utils
    directory = f"kubernetes-json-schema/v{version}.0-local-strict"
    group = api_version.split("/")[0].split(".")[0] + "-" if "/" in api_version else ""
    short = f"{group}{api_version.rsplit('/', 1)[-1]}"
    schema = utils.schema_contents(f"{directory}/{kind.lower()}-{short}.json", version)
    definitions = utils.schema_contents(f"{directory}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def closed(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a CRD schema in which unknown fields are errors, as under strict validation.

    Only the structural skeleton (properties, items, additionalProperties) is closed: the
    value validations under allOf/anyOf/oneOf/not restate fields of it and stay as they are.
    """
    node = copy.copy(schema)
    if "properties" in node:
        node["properties"] = {name: closed(child) for name, child in node["properties"].items()}
        if "additionalProperties" not in node and not node.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            node["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = closed(node["additionalProperties"])
    if isinstance(node.get("items"), dict):
        node["items"] = closed(node["items"])
    return node


@cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The vendored CRD's openAPIV3Schema of one served version, as the CRD states it."""
    group, version = api_version.split("/")
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
            for served in crd["spec"]["versions"]:
                if served["name"] == version:
                    schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
                    return schema
    raise AssertionError(f"no vendored CRD for {api_version} {kind}")


@cache
def crd_validator(api_version: str, kind: str) -> Any:
    """A validator of one custom kind: its CRD schema closed, its metadata an ObjectMeta.

    A CRD's schema says only ``metadata: {type: object}``; the API server checks it as the
    ObjectMeta it is, so it is checked against kubernetes-validate's strict ObjectMeta here.
    """
    from referencing import Registry, Resource

    version = KUBERNETES_VERSIONS[-1]
    definitions = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{version}.0-local-strict/_definitions.json", version
    )
    schema = closed(crd_schema(api_version, kind))
    schema["properties"] = {**schema["properties"], "metadata": {"$ref": OBJECT_META}}
    # No metaschema check: CRDs carry Go regexes (`^(?i)…`) Python's re cannot compile; the
    # patterns our objects actually meet are compiled during validation all the same.
    return jsonschema.Draft202012Validator(
        schema, registry=Resource.from_contents(definitions) @ Registry()
    )


def is_custom(obj: dict[str, Any]) -> bool:
    """Whether the object is of a custom kind (validated against a vendored CRD)."""
    api_version: str = obj["apiVersion"]
    return api_version.startswith(CUSTOM_GROUPS)


def validate_object(obj: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError unless strict validation accepts the object.

    Built-in kinds are checked for every version of KUBERNETES_VERSIONS, custom kinds against
    their vendored CRD.
    """
    if is_custom(obj):
        crd_validator(obj["apiVersion"], obj["kind"]).validate(obj)
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validator(version, obj["apiVersion"], obj["kind"]).validate(obj)
