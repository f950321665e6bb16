"""schemathesis against a running gateway's own /openapi.json: no 5xx, every answer as documented.

A real gateway over real Redis publishes what the generated requests carry (into this module's
namespace). Examples are bounded per operation so the module stays well under two minutes.
"""

from __future__ import annotations

import uuid
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.integration.gateway.conftest import ALL_TOKEN
from tests.support.gateway import GatewayProcess

#: Generated examples per operation (43 operations with the platform's 20 contracts).
EXAMPLES = 8


def test_the_gateway_answers_as_its_openapi_document_says(gateway: GatewayProcess) -> None:
    # schemathesis' pytest plugin (from_fixture) does not run under this pytest, so each
    # operation's strategy is driven by hypothesis here; failures are gathered per operation.
    api = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    headers = {"Authorization": f"Bearer {ALL_TOKEN}"}
    failures: dict[str, str] = {}
    operations = [result.ok() for result in api.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) > 40

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case[Any]) -> None:
            if case.headers and "Idempotency-Key" in case.headers:
                # A client's keys are unique per request; generated ones repeat ("0"), and a
                # repeat with another body is rightly refused (tested in test_inputs).
                case.headers["Idempotency-Key"] = uuid.uuid4().hex
            case.call_and_validate(headers=headers)

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # gathered per operation, then reported
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:3000]
    assert failures == {}, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
