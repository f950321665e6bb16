"""The exported payload schema of every contract and its model accept the same payloads.

Three properties, each on the schema ``tasklane contracts export`` writes (JSON Schema 2020-12,
checked by ``jsonschema``) and on the model (``validate_payload``):

1. payloads generated from the schema are all accepted by the model;
2. the known disagreements of issue 17 are refused by both, which name the field;
3. a valid payload with one field of the wrong type, one required field removed or one unknown
   field added is refused by both, which name the field.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator

from tasklane.contracts import REGISTRY, TaskContract
from tasklane.contracts.validation import validate_payload
from tasklane.errors import PayloadValidationError
from tasklane.schema import contract_schemas
from tests.support.jsonschema_strategies import from_schema

# Enough to reach every branch of these schemas; more mostly repeats (the file stays under a
# minute on a loaded two-core machine).
FIDELITY = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
)


def _validator(contract: TaskContract[Any, Any]) -> Draft202012Validator:
    schema = contract_schemas(contract)[0]
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _schema_names(validator: Draft202012Validator, payload: dict[str, Any], name: str) -> bool:
    """Whether the schema refuses ``payload`` with an error at or about field ``name``."""
    errors = list(validator.iter_errors(payload))
    return bool(errors) and any(
        name in error.absolute_path or f"'{name}'" in error.message for error in _flatten(errors)
    )


def _flatten(errors: list[Any]) -> list[Any]:
    # oneOf/anyOf errors carry the failures of their branches as context.
    out: list[Any] = []
    for error in errors:
        out.append(error)
        out += _flatten(list(error.context or []))
    return out


def _model_names(contract: TaskContract[Any, Any], payload: dict[str, Any], name: str) -> bool:
    """Whether the model refuses ``payload`` with a problem located at field ``name``."""
    with pytest.raises(PayloadValidationError) as refused:
        validate_payload(contract, payload)
    return any(name in problem.location for problem in refused.value.problems)


# --- 1. Everything the schema allows, the model takes ------------------------------------------

WORK_CONTRACTS = [c for c in REGISTRY if c.payload.model_fields]


@pytest.mark.parametrize("contract", WORK_CONTRACTS, ids=lambda c: c.name)
def test_every_schema_valid_payload_is_accepted_by_the_model(
    contract: TaskContract[Any, Any],
) -> None:
    schema = contract_schemas(contract)[0]

    @FIDELITY
    @given(from_schema(schema))
    def accepted(payload: dict[str, Any]) -> None:
        validate_payload(contract, payload)

    accepted()


@pytest.mark.parametrize(
    "contract", [c for c in REGISTRY if not c.payload.model_fields], ids=lambda c: c.name
)
def test_a_ping_takes_exactly_the_empty_object(contract: TaskContract[Any, Any]) -> None:
    validator = _validator(contract)

    validate_payload(contract, {})
    assert validator.is_valid({})
    assert _schema_names(validator, {"x": 1}, "x")
    assert _model_names(contract, {"x": 1}, "x")


# --- Valid payloads, the base of the counterexamples and mutations -----------------------------

VALID: dict[str, dict[str, Any]] = {
    "notifier.email.send": {
        "to": ["ada@example.com"],
        "cc": ["bob@example.org"],
        "sender": "ops@example.com",
        "subject": "Hello",
        "text": "Hi",
    },
    "notifier.im.send": {
        "channel": "webhook",
        "url": "https://hooks.example.com/services/T0?token=a%20b",
        "text": "deployed",
    },
    "scraper.page.fetch": {
        "url": "http://127.0.0.1:8080/page",
        "selectors": {"title": {"css": "h1", "many": False}},
        "max_bytes": 1000,
        "timeout": 5,
    },
    "scraper.site.crawl": {
        "seeds": ["https://example.com/"],
        "max_pages": 10,
        "max_depth": 1,
        "max_bytes": 1000,
        "build_report": True,
        "crawl_id": "nightly-1",
    },
    "scraper.crawl.status": {"crawl_id": "nightly-1"},
    "scraper.crawl.advance": {"crawl_id": "nightly-1", "level": 1},
    "scraper.crawl.fetch": {
        "crawl_id": "nightly-1",
        "batch_id": "b1",
        "level": 0,
        "urls": [{"url": "https://example.com/", "attempt": 0}],
    },
    "scraper.report.build": {"crawl_id": "nightly-1", "top": 5},
    "media.image.transform": {
        "source": "s3://bucket/in.jpg",
        "resize": {"width": 100, "fit": "fit"},
        "auto_orient": False,
        "quality": 90,
    },
    "media.image.thumbnail": {
        "source": "file:///data/in.png",
        "sizes": [{"width": 64, "height": 64}],
    },
    "media.video.probe": {"source": "https://cdn.example.com/v.mp4"},
    "media.video.thumbnail": {"source": "s3://bucket/v.mp4", "offset": 1.5, "max_width": 320},
    "media.video.transcode": {"source": "s3://bucket/v.mp4", "height": 480},
}


def test_the_valid_payloads_cover_every_work_contract_and_are_valid() -> None:
    assert set(VALID) == {c.name for c in WORK_CONTRACTS}
    for name, payload in VALID.items():
        contract = REGISTRY[name]
        validate_payload(contract, payload)
        assert _validator(contract).is_valid(payload), name


def _with(name: str, path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    payload = copy.deepcopy(VALID[name])
    target: Any = payload
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return payload


# --- 2. The disagreements found in issue 17 ----------------------------------------------------

BAD_EMAILS = [
    "a@b",
    "root@localhost",
    "a@example.test",
    "a@example.local",
    '"a b"@example.com',
    "a@[127.0.0.1]",
    "a..b@example.com",
    "a@example.com\n",
]
BAD_WEBHOOKS = [
    "ftp://example.com/hook",
    "mailto:ops@example.com",
    "urn:isbn:0451450523",
    "https://example.com:99999/hook",
    "https://example.com/hook\n",
]
BAD_SOURCES = ["0", "ftp://example.com/a.jpg", "data:image/png;base64,AA", "/data/in.jpg"]

COUNTEREXAMPLES: list[tuple[str, tuple[str | int, ...], Any]] = [
    *[("notifier.email.send", ("to", 0), email) for email in BAD_EMAILS],
    *[("notifier.email.send", ("sender",), email) for email in BAD_EMAILS[:3]],
    *[("notifier.im.send", ("url",), url) for url in BAD_WEBHOOKS],
    ("scraper.page.fetch", ("url",), "ftp://example.com/"),
    ("scraper.site.crawl", ("seeds", 0), "https://example.com:70000/"),
    *[
        (name, ("source",), source)
        for name in ("media.image.transform", "media.video.probe")
        for source in BAD_SOURCES
    ],
    ("scraper.page.fetch", ("max_bytes",), "1000"),
    ("scraper.page.fetch", ("max_bytes",), True),
    ("scraper.page.fetch", ("timeout",), "15"),
    ("scraper.site.crawl", ("build_report",), "true"),
    ("scraper.page.fetch", ("selectors", "title", "many"), "yes"),
    ("media.image.transform", ("quality",), "90"),
    ("media.image.transform", ("auto_orient",), "off"),
    ("media.video.transcode", ("height",), 480.5),
]


@pytest.mark.parametrize(
    ("name", "path", "value"),
    COUNTEREXAMPLES,
    ids=[f"{n}:{'.'.join(map(str, p))}={v!r}" for n, p, v in COUNTEREXAMPLES],
)
def test_a_value_the_issue_found_is_refused_by_both(
    name: str, path: tuple[str | int, ...], value: Any
) -> None:
    contract = REGISTRY[name]
    payload = _with(name, path, value)

    assert _schema_names(_validator(contract), payload, str(path[0]))
    assert _model_names(contract, payload, path[0])


# Rules between fields: refused by both (the model names the object, the schema its keyword).
CROSS_FIELD: list[tuple[str, dict[str, Any]]] = [
    ("notifier.email.send", {**VALID["notifier.email.send"], "template": "welcome"}),
    ("notifier.email.send", {"to": ["a@example.com"], "subject": "s"}),
    (
        "scraper.page.fetch",
        _with("scraper.page.fetch", ("selectors", "t"), {"css": "a", "xpath": "//a"}),
    ),
    ("scraper.page.fetch", _with("scraper.page.fetch", ("selectors", "t"), {"many": True})),
    ("scraper.page.fetch", _with("scraper.page.fetch", ("selectors", "t"), {"css": None})),
    ("media.image.transform", _with("media.image.transform", ("resize",), {"fit": "fit"})),
    (
        "media.image.transform",
        _with("media.image.transform", ("resize",), {"width": 5, "fit": "crop"}),
    ),
    ("media.video.thumbnail", _with("media.video.thumbnail", ("contact_sheet",), {"rows": 2})),
]


@pytest.mark.parametrize(("name", "payload"), CROSS_FIELD, ids=[n for n, _ in CROSS_FIELD])
def test_a_rule_between_fields_is_refused_by_both(name: str, payload: dict[str, Any]) -> None:
    contract = REGISTRY[name]

    assert not _validator(contract).is_valid(payload)
    with pytest.raises(PayloadValidationError):
        validate_payload(contract, payload)


def test_the_values_on_the_edge_are_accepted_by_both() -> None:
    # JSON Schema counts 3.0 as an integer; an email's domain case is free; ports up to 65535.
    cases = [
        ("media.video.transcode", ("height",), 480.0),
        ("notifier.email.send", ("to", 0), "O'Hara+tag@Mail.Example.COM"),
        ("notifier.im.send", ("url",), "HTTP://10.0.0.1:65535/a?b=c#d"),
        ("media.image.transform", ("source",), "HTTPS://example.com/a.jpg"),
    ]
    for name, path, value in cases:
        payload = _with(name, path, value)
        assert _validator(REGISTRY[name]).is_valid(payload), (name, value)
        validate_payload(REGISTRY[name], payload)


# --- 3. Mutations of valid payloads ------------------------------------------------------------

#: A value of another JSON type than the one given.
_WRONG_TYPE: dict[type, Any] = {
    str: 12345,
    bool: "true",
    int: "1",
    float: "1.5",
    list: {"a": 1},
    dict: ["a"],
}


def _mutations() -> list[tuple[str, str, str, dict[str, Any]]]:
    out: list[tuple[str, str, str, dict[str, Any]]] = []
    for name, valid in VALID.items():
        schema = contract_schemas(REGISTRY[name])[0]
        for field, value in valid.items():
            out.append((name, field, "wrong type", {**valid, field: _WRONG_TYPE[type(value)]}))
        for field in schema.get("required", []):
            out.append((name, field, "removed", {k: v for k, v in valid.items() if k != field}))
        assert schema["additionalProperties"] is False
        out.append((name, "surplus", "unknown", {**valid, "surplus": 1}))
    return out


MUTATIONS = _mutations()


@pytest.mark.parametrize(
    ("name", "field", "kind", "payload"),
    MUTATIONS,
    ids=[f"{n}:{f}:{k}" for n, f, k, _ in MUTATIONS],
)
def test_a_mutated_payload_is_refused_by_both_naming_the_field(
    name: str, field: str, kind: str, payload: dict[str, Any]
) -> None:
    contract = REGISTRY[name]

    assert _schema_names(_validator(contract), payload, field), kind
    assert _model_names(contract, payload, field), kind


def test_python_callers_keep_passing_python_values() -> None:
    # Internal callers build payloads from Python objects: models, and an HttpUrl stays one.
    fetch = validate_payload(REGISTRY["scraper.page.fetch"], VALID["scraper.page.fetch"])
    again = validate_payload(REGISTRY["scraper.page.fetch"], fetch.model_dump())

    assert again == fetch
    assert str(fetch.url) == "http://127.0.0.1:8080/page"
    assert fetch.max_bytes == 1000 and fetch.timeout == 5.0


def test_docs_protocol_lists_every_contract_and_every_exported_file() -> None:
    text = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()

    for contract in REGISTRY:
        row = (
            f"| `{contract.name}` | `{contract.queue}` | {contract.priority} | "
            f"{contract.soft_time_limit:g} s / {contract.time_limit:g} s | "
            f"{contract.retry.max_retries} |"
        )
        assert row in text, row
        assert f"# contracts/{contract.name}.json\n" in text
        assert f"# contracts/{contract.name}.result.json\n" in text
