"""Beat's probes in the chart: HTTP ``/livez`` and ``/readyz`` on the metrics port, from memory."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.conftest import RELEASE, Rendered, render


def _beat_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (beat,) = [
        o
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"] == f"{RELEASE}-beat"
    ]
    (container,) = beat["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_beat_probes_use_livez_and_readyz_on_the_metrics_port(rendered: Rendered) -> None:
    if not rendered.merged["beat"]["enabled"]:
        pytest.skip("Beat is off in these values")
    container = _beat_container(rendered.objects)
    assert {"name": "metrics", "containerPort": rendered.merged["tasklane"]["metricsPort"],
            "protocol": "TCP"} in container["ports"]  # fmt: skip
    # No exec probe: one would spawn Python and read Redis on every probe.
    assert container["startupProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TASKLANE_METRICS_PORT"] == str(rendered.merged["tasklane"]["metricsPort"])
    assert env["TASKLANE_BEAT_LIVENESS_TIMEOUT"] == str(rendered.merged["beat"]["healthMaxAge"])


def test_beat_health_max_age_is_the_liveness_timeout_and_at_least_a_second(chart: Any) -> None:
    import helm_python

    container = _beat_container(
        [o for objects in render(chart, {"beat": {"healthMaxAge": 7}}).values() for o in objects]
    )
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TASKLANE_BEAT_LIVENESS_TIMEOUT"] == "7"
    with pytest.raises(helm_python.HelmValuesError, match="healthMaxAge"):
        chart.validate_schema({"beat": {"healthMaxAge": 0}})
