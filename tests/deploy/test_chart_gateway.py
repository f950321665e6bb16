"""The chart's `gateway` component: Deployment, Service, HPA, PDB, NetworkPolicy and PodMonitor.

The loops of test_chart.py (lint, schema, strict validation, locked-down pods, labels) cover it
through ci/production-redis-values.yaml, which enables it; these tests check what it promises.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tasklane.gateway.settings import GatewaySettings
from tests.deploy.conftest import (
    CHART,
    NAMESPACE,
    RELEASE,
    VALUES_NAMES,
    Rendered,
    render,
    values_of,
)
from tests.deploy.validate import validate_object

NAME = f"{RELEASE}-gateway"
TOKENS_FILE = "/etc/tasklane/gateway/tokens.yaml"
ENABLED: dict[str, Any] = {"gateway": {"enabled": True}}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` deep-merged with ``extra`` (a new dict; neither argument changes)."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _rendered(chart: Any, *extra: dict[str, Any]) -> Rendered:
    """The chart rendered with the gateway enabled and ``extra`` values over it."""
    values = ENABLED
    for more in extra:
        values = _merge(values, more)
    chart.validate_schema(values)
    return Rendered("gateway", values, chart.merge_values(values), render(chart, values))


def _gateway_objects(rendered: Rendered) -> list[dict[str, Any]]:
    return [
        o
        for o in rendered.objects
        if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "gateway"
    ]


def _container(rendered: Rendered) -> dict[str, Any]:
    pod: dict[str, Any] = rendered.named("Deployment", NAME)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return dict(container)


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


# ----------------------------------------------------------------------------- on and off


def test_gateway_is_disabled_by_default_and_renders_nothing(chart: Any) -> None:
    assert chart.merge_values({})["gateway"]["enabled"] is False
    rendered = Rendered("default", {}, {}, render(chart, {}))
    assert _gateway_objects(rendered) == []
    assert [path for path in rendered.by_template if "/gateway/" in path] == []
    notes = chart.render({}, name=RELEASE, namespace=NAMESPACE)
    assert "Gateway" not in next(t for p, t in notes.items() if p.endswith("NOTES.txt"))
    # Nor is it in the manifests generated from the defaults.
    manifests = (CHART.parents[2] / "deploy" / "k8s" / "tasklane.yaml").read_text("utf-8")
    assert "gateway" not in manifests


def test_a_values_set_of_the_chart_loops_enables_the_gateway() -> None:
    # test_chart.py lints, schema-checks and validates every VALUES_NAMES render: one of them
    # must run the gateway for those loops to cover it.
    enabling = [n for n in VALUES_NAMES if values_of(n).get("gateway", {}).get("enabled")]
    assert enabling == ["production-redis-values"]


def test_enabled_gateway_renders_each_kind_once_and_all_are_valid(chart: Any) -> None:
    rendered = _rendered(chart, {"monitoring": {"podMonitor": {"enabled": True}}})
    objects = _gateway_objects(rendered)
    assert sorted(o["kind"] for o in objects) == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PodMonitor",
        "Service",
    ]
    for obj in objects:
        assert obj["metadata"]["name"] == NAME
        assert obj["metadata"]["namespace"] == NAMESPACE
        validate_object(obj)  # strict: kubernetes-validate, the vendored CRD for the PodMonitor
    notes = chart.render(ENABLED, name=RELEASE, namespace=NAMESPACE)
    text = next(t for p, t in notes.items() if p.endswith("NOTES.txt"))
    assert f"http://{NAME}.{NAMESPACE}.svc:8080/v1/tasks/<task>" in text
    assert "tasklane-gateway-tokens" in text


def test_production_values_run_the_gateway_with_its_peers(chart: Any) -> None:
    values = values_of("production-redis-values")
    rendered = Rendered("prod", values, chart.merge_values(values), render(chart, values))
    assert {o["kind"] for o in _gateway_objects(rendered)} >= {"Deployment", "PodMonitor"}
    hpa = rendered.named("HorizontalPodAutoscaler", NAME)["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    container = _container(rendered)
    assert container["image"] == "registry.example.org/tasklane:1.4.2"
    env = _env(container)
    assert env["TASKLANE_NAMESPACE"]["value"] == "prod."
    assert env["OTEL_SERVICE_NAME"]["value"] == "tasklane-gateway"
    assert container["envFrom"] == [{"secretRef": {"name": "tasklane-service-secrets"}}]
    pod = rendered.named("Deployment", NAME)["spec"]["template"]["spec"]
    assert pod["volumes"][1]["secret"]["secretName"] == "tasklane-gateway-publishers"
    policy = rendered.named("NetworkPolicy", NAME)["spec"]
    assert policy["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}}
    ]
    for obj in _gateway_objects(rendered):
        validate_object(obj)


# ----------------------------------------------------------------------------- Deployment


def test_deployment_runs_tasklane_gateway_from_the_shared_image(chart: Any) -> None:
    rendered = _rendered(chart)
    deployment = rendered.named("Deployment", NAME)
    container = _container(rendered)
    assert container["name"] == "gateway"
    assert container["command"] == ["tasklane", "gateway"] and "args" not in container
    assert container["image"] == "ghcr.io/example/tasklane:0.1.0"
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    # No "metrics" port: the release's PodMonitor leaves the gateway to its own.
    assert all(port["name"] != "metrics" for port in container["ports"])
    assert container["resources"] == chart.merge_values({})["gateway"]["resources"]
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0
    # The HPA owns the replica count: a helm upgrade must not reset it.
    assert "replicas" not in deployment["spec"]
    fixed = _rendered(chart, {"gateway": {"replicas": 4, "autoscaling": {"enabled": False}}})
    assert fixed.named("Deployment", NAME)["spec"]["replicas"] == 4
    assert fixed.kind("HorizontalPodAutoscaler") == []


def test_probes_are_livez_and_readyz_on_the_http_port(chart: Any) -> None:
    container = _container(_rendered(chart, {"gateway": {"port": 9443}}))
    assert container["ports"] == [{"name": "http", "containerPort": 9443, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert _env(container)["TASKLANE_GATEWAY_PORT"]["value"] == "9443"


def test_tokens_file_is_the_secret_mounted_read_only(chart: Any) -> None:
    rendered = _rendered(
        chart, {"gateway": {"tokens": {"existingSecret": "publishers", "key": "gateway.yaml"}}}
    )
    container = _container(rendered)
    assert _env(container)["TASKLANE_GATEWAY_TOKENS_FILE"] == {
        "name": "TASKLANE_GATEWAY_TOKENS_FILE",
        "value": TOKENS_FILE,
    }
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tokens"]
    # The directory, not a subPath, so a rotated Secret reaches the running pod.
    assert mount == {"name": "tokens", "mountPath": "/etc/tasklane/gateway", "readOnly": True}
    pod = rendered.named("Deployment", NAME)["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tokens"]
    assert volume["secret"]["secretName"] == "publishers"
    assert volume["secret"]["items"] == [{"key": "gateway.yaml", "path": "tokens.yaml"}]
    assert f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}" == TOKENS_FILE
    assert volume["secret"]["defaultMode"] == 0o440
    # The chart creates no Secret: the publishers file only comes by reference.
    assert rendered.kind("Secret") == []


def test_gateway_gets_the_broker_state_and_platform_settings_like_other_components(
    chart: Any,
) -> None:
    rendered = _rendered(
        chart,
        {
            "tasklane": {"namespace": "staging.", "env": {"TASKLANE_PUBLISH_TIMEOUT": "5"}},
            "gateway": {"env": {"TASKLANE_LOG_LEVEL": "DEBUG"}},
        },
    )
    env = _env(_container(rendered))
    api = rendered.named("Deployment", f"{RELEASE}-schedule-api")["spec"]["template"]["spec"]
    api_env = _env(api["containers"][0])
    shared = ("TASKLANE_BROKER_URL", "TASKLANE_RESULT_BACKEND", "TASKLANE_NAMESPACE",
              "TASKLANE_LOG_FORMAT", "TASKLANE_PUBLISH_TIMEOUT", "OTEL_SDK_DISABLED")  # fmt: skip
    for name in shared:
        assert env[name] == api_env[name], name
    assert env["TASKLANE_BROKER_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "tasklane-broker",
        "key": "broker-url",
    }
    assert env["TASKLANE_NAMESPACE"]["value"] == "staging."
    assert env["TASKLANE_LOG_LEVEL"]["value"] == "DEBUG"
    # /metrics is on the http port: no TASKLANE_METRICS_PORT server beside it.
    assert "TASKLANE_METRICS_PORT" not in env


def test_chart_settings_are_gateway_settings_within_their_bounds(
    chart: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = {f"TASKLANE_GATEWAY_{name.upper()}" for name in GatewaySettings.model_fields}
    values = {"gateway": {"idempotencyWindow": 600, "maxBodyBytes": 2048, "maxBatch": 100000,
                          "shutdownDelay": 0}}  # fmt: skip
    env = _env(_container(_rendered(chart, values)))
    chart_settings = {name: e["value"] for name, e in env.items() if "TASKLANE_GATEWAY_" in name}
    assert set(chart_settings) <= fields
    assert set(chart_settings) == fields  # the chart sets every gateway setting explicitly
    for name, value in chart_settings.items():
        monkeypatch.setenv(name, value)
    settings = GatewaySettings()
    assert (settings.port, settings.idempotency_window) == (8080, 600)
    assert (settings.max_body_bytes, settings.max_batch) == (2048, 100000)
    assert settings.shutdown_delay == 0
    assert str(settings.tokens_file) == TOKENS_FILE


def test_gateway_pods_are_locked_down_and_spread(chart: Any) -> None:
    rendered = _rendered(chart)
    pod = rendered.named("Deployment", NAME)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    context = _container(rendered)["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    (spread,) = pod["topologySpreadConstraints"]
    selector = rendered.named("Deployment", NAME)["spec"]["selector"]["matchLabels"]
    assert spread["labelSelector"]["matchLabels"] == selector
    # The gateway drains itself (TASKLANE_GATEWAY_SHUTDOWN_DELAY) within the grace period.
    delay = float(_env(_container(rendered))["TASKLANE_GATEWAY_SHUTDOWN_DELAY"]["value"])
    assert (delay, pod["terminationGracePeriodSeconds"]) == (5, 30)
    assert "lifecycle" not in _container(rendered)


# ----------------------------------------------------------------------------- Service, HPA, PDB


def test_service_selects_the_gateway_pods_on_http(chart: Any) -> None:
    rendered = _rendered(chart)
    deployment = rendered.named("Deployment", NAME)
    service = rendered.named("Service", NAME)["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["selector"].items() <= labels.items()
    assert service["selector"]["app.kubernetes.io/component"] == "gateway"
    assert service["ports"] == [{"name": "http", "port": 8080, "targetPort": "http",
                                 "protocol": "TCP"}]  # fmt: skip


def test_hpa_scales_the_deployment_on_cpu_within_its_bounds(chart: Any) -> None:
    scaling = {"minReplicas": 3, "maxReplicas": 7, "targetCPUUtilizationPercentage": 55}
    spec = _rendered(chart, {"gateway": {"autoscaling": scaling}}).named(
        "HorizontalPodAutoscaler", NAME
    )["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (3, 7)
    assert spec["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu",
         "target": {"type": "Utilization", "averageUtilization": 55}}}
    ]  # fmt: skip
    defaults = _rendered(chart).named("HorizontalPodAutoscaler", NAME)["spec"]
    assert (defaults["minReplicas"], defaults["maxReplicas"]) == (2, 10)
    # An HPA cannot hold zero pods: minReplicas 0 is raised to 1.
    zero = _rendered(chart, {"gateway": {"autoscaling": {"minReplicas": 0}}})
    assert zero.named("HorizontalPodAutoscaler", NAME)["spec"]["minReplicas"] == 1


def test_pod_disruption_budget_covers_the_gateway_pods(chart: Any) -> None:
    rendered = _rendered(chart, {"gateway": {"podDisruptionBudget": {"maxUnavailable": "50%"}}})
    budget = rendered.named("PodDisruptionBudget", NAME)["spec"]
    assert budget["maxUnavailable"] == "50%"
    selector = rendered.named("Deployment", NAME)["spec"]["selector"]["matchLabels"]
    assert budget["selector"]["matchLabels"] == selector
    off = _rendered(chart, {"gateway": {"podDisruptionBudget": {"enabled": False}}})
    assert NAME not in {b["metadata"]["name"] for b in off.kind("PodDisruptionBudget")}


# ----------------------------------------------------------------------------- NetworkPolicy


def _ports(rule: dict[str, Any]) -> list[tuple[str, int]]:
    return [(p["protocol"], p["port"]) for p in rule.get("ports", [])]


def test_network_policy_lets_in_publishers_and_scrapers_on_http_only(chart: Any) -> None:
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}}]
    values = {"gateway": {"port": 8443, "networkPolicy": {"ingressFrom": peers}}}
    rendered = _rendered(chart, values)
    policy = rendered.named("NetworkPolicy", NAME)["spec"]
    selector = rendered.named("Deployment", NAME)["spec"]["selector"]["matchLabels"]
    assert policy["podSelector"]["matchLabels"] == selector
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    publishers, scrapers = policy["ingress"]
    assert publishers == {"from": peers, "ports": [{"protocol": "TCP", "port": 8443}]}
    metrics_from = rendered.merged["networkPolicy"]["metricsFrom"]
    assert scrapers == {"from": metrics_from, "ports": [{"protocol": "TCP", "port": 8443}]}
    # No peers given: the release namespace only, never the whole cluster.
    default = _rendered(chart).named("NetworkPolicy", NAME)["spec"]["ingress"][0]
    assert default == {"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 8080}]}


def test_network_policy_lets_out_dns_broker_and_state_redis_only(chart: Any) -> None:
    broker = {"to": [{"podSelector": {"matchLabels": {"app": "redis"}}}], "ports": [6379]}
    rendered = _rendered(chart, {"networkPolicy": {"broker": broker}})
    egress = rendered.named("NetworkPolicy", NAME)["spec"]["egress"]
    dns, redis = egress
    assert _ports(dns) == [("UDP", 53), ("TCP", 53)]
    assert dns["to"] == rendered.merged["networkPolicy"]["dns"]["to"]
    assert redis == {"to": broker["to"], "ports": [{"protocol": "TCP", "port": 6379}]}
    # The default broker ports (Redis and AMQP) to any destination, nothing else.
    default = _rendered(chart).named("NetworkPolicy", NAME)["spec"]["egress"]
    assert [_ports(rule) for rule in default] == [
        [("UDP", 53), ("TCP", 53)],
        [("TCP", 6379), ("TCP", 5672)],
    ]


@pytest.mark.parametrize(
    ("endpoint", "port"),
    [
        ("http://otel-collector.observability:4318", 4318),
        ("https://otlp.example.org", 443),
        ("http://collector", 80),
    ],
)
def test_network_policy_lets_out_otlp_when_tracing_is_on(
    chart: Any, endpoint: str, port: int
) -> None:
    extra = {"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}], "ports": [{"port": 9000}]}
    values = {
        "otel": {"enabled": True, "endpoint": endpoint},
        "gateway": {"networkPolicy": {"extraEgress": [extra]}},
    }
    policy = _rendered(chart, values).named("NetworkPolicy", NAME)
    egress = policy["spec"]["egress"]
    assert egress[2:] == [{"ports": [{"protocol": "TCP", "port": port}]}, extra]
    validate_object(policy)
    without = _rendered(chart, {"gateway": {"networkPolicy": {"extraEgress": [extra]}}})
    assert without.named("NetworkPolicy", NAME)["spec"]["egress"][2:] == [extra]


def test_no_network_policy_when_policies_are_off(chart: Any) -> None:
    rendered = _rendered(chart, {"networkPolicy": {"enabled": False}})
    assert rendered.kind("NetworkPolicy") == []


# ----------------------------------------------------------------------------- PodMonitor


def test_pod_monitor_scrapes_metrics_on_the_http_port(chart: Any) -> None:
    labels = {"release": "kube-prometheus-stack"}
    monitoring = {"podMonitor": {"enabled": True, "interval": "15s", "labels": labels}}
    rendered = _rendered(chart, {"monitoring": monitoring})
    monitor = rendered.named("PodMonitor", NAME)
    assert monitor["metadata"]["labels"].items() >= labels.items()
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "15s"}
    ]
    pod_labels = rendered.named("Deployment", NAME)["spec"]["template"]["metadata"]["labels"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert selector["app.kubernetes.io/component"] == "gateway"
    # The selected port exists on the pod, by that name.
    assert "http" in {p["name"] for p in _container(rendered)["ports"]}
    validate_object(monitor)
    # The release's PodMonitor stays (workers, Beat, exporters on their "metrics" ports).
    assert {m["metadata"]["name"] for m in rendered.kind("PodMonitor")} == {
        NAME,
        f"{RELEASE}-metrics",
    }
    assert NAME not in {m["metadata"]["name"] for m in _rendered(chart).kind("PodMonitor")}


# ----------------------------------------------------------------------------- values


def test_schema_refuses_unknown_or_mistyped_gateway_values(chart: Any) -> None:
    import helm_python

    unknown: list[dict[str, Any]] = [
        {"gateway": {"enabeld": True}},
        {"gateway": {"tokens": {"secret": "x"}}},
        {"gateway": {"autoscaling": {"targetCPU": 50}}},
        {"gateway": {"networkPolicy": {"ingress": []}}},
    ]
    for values in unknown:
        with pytest.raises(helm_python.HelmValuesError, match="additional properties"):
            chart.validate_schema(values)
    mistyped: list[dict[str, Any]] = [
        {"gateway": {"port": 70000}},
        {"gateway": {"enabled": "yes"}},
        {"gateway": {"replicas": -1}},
        {"gateway": {"autoscaling": {"targetCPUUtilizationPercentage": 0}}},
        {"gateway": {"networkPolicy": {"ingressFrom": {"podSelector": {}}}}},
    ]
    for values in mistyped:
        with pytest.raises(helm_python.HelmValuesError):
            chart.validate_schema(values)


GATEWAY_BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "no-tokens-secret": (
        {"tokens": {"existingSecret": ""}},
        "gateway.enabled needs gateway.tokens.existingSecret",
    ),
    "no-tokens-key": ({"tokens": {"key": ""}}, "gateway.tokens.key is empty"),
    "max-below-min": (
        {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}},
        "gateway.autoscaling: maxReplicas 3 is below minReplicas 5",
    ),
    "empty-batch": ({"maxBatch": 0}, "gateway.maxBatch is 0: it must be at least 1"),
    "huge-batch": ({"maxBatch": 100001}, "at most 100000"),
    "tiny-body": ({"maxBodyBytes": 100}, "gateway.maxBodyBytes is 100: it must be at least 1024"),
    "no-idempotency-window": ({"idempotencyWindow": 0}, "gateway.idempotencyWindow is 0"),
    "shutdown-delay-eats-grace": (
        {"shutdownDelay": 30, "terminationGracePeriodSeconds": 30},
        "gateway.shutdownDelay 30 leaves no time",
    ),
}


@pytest.mark.parametrize("case", sorted(GATEWAY_BAD_VALUES))
def test_bad_gateway_values_are_refused_with_a_clear_message(chart: Any, case: str) -> None:
    import helm_python

    gateway, message = GATEWAY_BAD_VALUES[case]
    values = {"gateway": {"enabled": True, **gateway}}
    chart.validate_schema(values)  # the schema lets them through: the message must come from fail
    with pytest.raises(helm_python.HelmRenderError) as caught:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(caught.value)
    # The same values are harmless while the gateway is off.
    chart.render({"gateway": {**values["gateway"], "enabled": False}}, name=RELEASE,
                 namespace=NAMESPACE)  # fmt: skip


@pytest.mark.parametrize(
    ("key", "field"),
    [
        ("idempotencyWindow", "idempotency_window"),
        ("maxBodyBytes", "max_body_bytes"),
        ("maxBatch", "max_batch"),
        ("shutdownDelay", "shutdown_delay"),
    ],
)
def test_chart_refuses_exactly_what_gateway_settings_refuse(
    chart: Any, key: str, field: str
) -> None:
    # check-values.yaml repeats GatewaySettings' bounds so a bad value fails the install, not
    # the pods: the chart accepts each bound and refuses one past it, as the settings do.
    import helm_python

    low = high = None
    for rule in GatewaySettings.model_fields[field].metadata:
        low = getattr(rule, "ge", low)
        high = getattr(rule, "le", high)
    assert low is not None
    cases = [(low, True), (low - 1, False)]
    if high is not None:
        cases += [(high, True), (high + 1, False)]
    for value, accepted in cases:
        # A grace period long enough for any shutdownDelay (checked apart, below).
        values = {"gateway": {"enabled": True, "terminationGracePeriodSeconds": 1000, key: value}}
        if accepted:
            chart.render(values, name=RELEASE, namespace=NAMESPACE)
        else:
            with pytest.raises(helm_python.HelmRenderError, match=f"gateway.{key} is {value}"):
                chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_gateway_values_are_documented(chart: Any) -> None:
    schema = yaml.safe_load((CHART / "values.schema.json").read_text("utf-8"))
    gateway = schema["properties"]["gateway"]
    assert gateway["additionalProperties"] is False
    assert gateway["properties"]["enabled"]["default"] is False
    docs = (CHART.parents[2] / "docs" / "deploy.md").read_text("utf-8")
    for key in ("gateway.tokens.existingSecret", "gateway.networkPolicy.ingressFrom",
                "gateway.autoscaling.maxReplicas"):  # fmt: skip
        assert f"`{key}`" in docs
    assert "## HTTP gateway" in docs
