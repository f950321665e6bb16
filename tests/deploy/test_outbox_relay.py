"""The Django outbox relay in the chart (``outboxRelay``): the project's image running
``python manage.py tasklane_relay``, probed and scraped on its metrics port, with its
PodDisruptionBudget and a NetworkPolicy that adds the database to DNS and the broker."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.conftest import RELEASE, Rendered, render, values_of
from tests.deploy.validate import validate_object

NAME = f"{RELEASE}-outbox-relay"
COMPONENT = "outbox-relay"
#: The smallest values that run the relay: the project's image by repository and tag.
ENABLED: dict[str, Any] = {
    "outboxRelay": {
        "enabled": True,
        "image": {"repository": "registry.example.org/shop-web", "tag": "2.3.1"},
    }
}


def _relay_values(**relay: Any) -> dict[str, Any]:
    """ENABLED with ``relay`` merged into its outboxRelay keys (one level deep)."""
    merged = {**ENABLED["outboxRelay"], **relay}
    return {"outboxRelay": merged}


def _rendered(chart: Any, values: dict[str, Any], name: str = "relay") -> Rendered:
    chart.validate_schema(values)
    return Rendered(name, values, chart.merge_values(values), render(chart, values))


def _relay_objects(rendered: Rendered) -> dict[str, dict[str, Any]]:
    """The relay's objects by kind (the component label says whose an object is)."""
    found: dict[str, dict[str, Any]] = {}
    for obj in rendered.objects:
        if obj["metadata"]["labels"].get("app.kubernetes.io/component") == COMPONENT:
            assert obj["kind"] not in found, f"two {obj['kind']} objects of the relay"
            found[obj["kind"]] = obj
    return found


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


# ----------------------------------------------------------------------------- on and off


def test_relay_renders_only_when_enabled(rendered: Rendered) -> None:
    objects = _relay_objects(rendered)
    relay = rendered.merged["outboxRelay"]
    if not relay["enabled"]:
        assert objects == {}
        return
    assert set(objects) == {"Deployment", "PodDisruptionBudget", "NetworkPolicy"}
    for obj in objects.values():
        assert obj["metadata"]["name"] == NAME
        validate_object(obj)
    # Disabled is the default: the ci file that enables it shows how.
    assert rendered.name != "default"


def test_every_relay_object_validates_under_every_switch(chart: Any) -> None:
    # On and off for each optional part; every object strict-valid for every Kubernetes version.
    variants = [
        ENABLED,
        _relay_values(image={"repository": "r.example.org/shop", "digest": "sha256:" + "cd" * 32},
                      batchSize=250, command=["/app/bin/django-admin", "tasklane_relay"],
                      podDisruptionBudget={"enabled": False},
                      extraEnv=[{"name": "DATABASE_PASSWORD",
                                 "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}],
                      podAnnotations={"example.org/team": "shop"},
                      nodeSelector={"example.org/role": "web"},
                      tolerations=[{"key": "web", "operator": "Exists", "effect": "NoSchedule"}],
                      networkPolicy={"database": {"to": [{"ipBlock": {"cidr": "10.9.0.0/16"}}],
                                                  "port": 6432},
                                     "extraEgress": [{"ports": [{"port": 4318}]}]}),
        {**ENABLED, "networkPolicy": {"enabled": False}},
        {**ENABLED, "monitoring": {"podMonitor": {"enabled": True}}},
    ]  # fmt: skip
    for values in variants:
        rendered = _rendered(chart, values)
        objects = _relay_objects(rendered)
        assert "Deployment" in objects
        for obj in [*objects.values(), *rendered.kind("PodMonitor")]:
            validate_object(obj)
    assert "PodDisruptionBudget" not in _relay_objects(_rendered(chart, variants[1]))
    assert "NetworkPolicy" not in _relay_objects(_rendered(chart, variants[2]))


# ----------------------------------------------------------------------------- the container


def test_relay_runs_manage_py_from_the_projects_image(chart: Any) -> None:
    container = _container(_relay_objects(_rendered(chart, ENABLED))["Deployment"])
    assert container["image"] == "registry.example.org/shop-web:2.3.1"
    assert container["command"] == ["python", "manage.py", "tasklane_relay"]
    # The probes' port reaches the relay whatever the project's TASKLANE setting says.
    assert container["args"] == ["--metrics-port", "9100"]

    digest = "sha256:" + "ab" * 32
    values = _relay_values(
        image={"repository": "r.example.org/shop", "tag": "1.0", "digest": digest,
               "pullPolicy": "Always"},
        command=["/app/bin/django-admin", "tasklane_relay"],
        batchSize=250,
    )  # fmt: skip
    container = _container(_relay_objects(_rendered(chart, values))["Deployment"])
    assert container["image"] == f"r.example.org/shop@{digest}"  # the digest wins over the tag
    assert container["imagePullPolicy"] == "Always"
    assert container["command"] == ["/app/bin/django-admin", "tasklane_relay"]
    assert container["args"] == ["--metrics-port", "9100", "--batch-size", "250"]


def test_relay_environment_reuses_the_broker_secret_and_adds_the_projects(chart: Any) -> None:
    values = {
        "tasklane": {"envFrom": [{"secretRef": {"name": "tasklane-service-secrets"}}]},
        **_relay_values(
            env={"DJANGO_SETTINGS_MODULE": "shop.settings.production"},
            extraEnv=[{"name": "DATABASE_PASSWORD",
                       "valueFrom": {"secretKeyRef": {"name": "shop-db", "key": "password"}}}],
            envFrom=[{"secretRef": {"name": "shop-database"}},
                     {"configMapRef": {"name": "shop-settings"}}],
        ),
    }  # fmt: skip
    container = _container(_relay_objects(_rendered(chart, values))["Deployment"])
    env = _env(container)
    # The same TASKLANE_* variables as every Tasklane container, secrets by reference only.
    assert env["TASKLANE_BROKER_URL"] == {
        "name": "TASKLANE_BROKER_URL",
        "valueFrom": {"secretKeyRef": {"name": "tasklane-broker", "key": "broker-url"}},
    }
    assert env["TASKLANE_RESULT_BACKEND"]["valueFrom"]["secretKeyRef"]["key"] == "result-backend"
    assert env["TASKLANE_METRICS_PORT"]["value"] == "9100"
    assert env["OTEL_SDK_DISABLED"]["value"] == "true"
    assert env["DJANGO_SETTINGS_MODULE"]["value"] == "shop.settings.production"
    assert env["DATABASE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "shop-db",
        "key": "password",
    }
    # The platform's sources first, then the project's (a later source wins on a clash).
    assert container["envFrom"] == [
        {"secretRef": {"name": "tasklane-service-secrets"}},
        {"secretRef": {"name": "shop-database"}},
        {"configMapRef": {"name": "shop-settings"}},
    ]


def test_relay_otel_service_name(chart: Any) -> None:
    values = {**ENABLED, "otel": {"enabled": True, "endpoint": "http://collector:4318"}}
    env = _env(_container(_relay_objects(_rendered(chart, values))["Deployment"]))
    assert env["OTEL_SERVICE_NAME"]["value"] == "tasklane-outbox-relay"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"] == "http://collector:4318"


@pytest.mark.parametrize("port", [9100, 9300])
def test_relay_probes_livez_and_readyz_on_the_named_metrics_port(chart: Any, port: int) -> None:
    values = {**ENABLED, "tasklane": {"metricsPort": port}}
    objects = _relay_objects(_rendered(chart, values))
    container = _container(objects["Deployment"])
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    assert container["startupProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # The relay listens where the probes knock: its flag and its environment name the port.
    args = container["args"]
    assert args[args.index("--metrics-port") + 1] == str(port)
    assert _env(container)["TASKLANE_METRICS_PORT"]["value"] == str(port)
    # /livez fails after 60 s without a beat: liveness must allow at least that long a pause.
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30
    (metrics_ingress,) = objects["NetworkPolicy"]["spec"]["ingress"]
    assert metrics_ingress["ports"] == [{"protocol": "TCP", "port": port}]


def test_relay_pod_is_locked_down_like_the_others(chart: Any) -> None:
    deployment = _relay_objects(_rendered(chart, ENABLED))["Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["resources"] == chart.merge_values({})["outboxRelay"]["resources"]


# ----------------------------------------------------------------------------- replicas and stops


def test_relay_replicas_grace_period_and_rollout(chart: Any) -> None:
    deployment = _relay_objects(_rendered(chart, ENABLED))["Deployment"]
    assert deployment["spec"]["replicas"] == 2  # any number may run: the default is two
    # New relays come up before old ones stop: rows keep leaving during a rollout.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spec = deployment["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] == 60

    deployment = _relay_objects(
        _rendered(chart, _relay_values(replicas=5, terminationGracePeriodSeconds=120))
    )["Deployment"]
    assert deployment["spec"]["replicas"] == 5
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120
    # Spread over nodes unless told otherwise, like the worker pools.
    (spread,) = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_relay_disruption_budget_selects_the_relays_and_nothing_else(chart: Any) -> None:
    rendered = _rendered(chart, _relay_values(podDisruptionBudget={"maxUnavailable": "50%"}))
    objects = _relay_objects(rendered)
    budget, deployment = objects["PodDisruptionBudget"], objects["Deployment"]
    assert budget["spec"]["maxUnavailable"] == "50%"
    selector = budget["spec"]["selector"]["matchLabels"]
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # No other pod of the release carries the relay's selector labels.
    for other in rendered.kind("Deployment"):
        if other is not deployment:
            labels = other["spec"]["template"]["metadata"]["labels"]
            assert not selector.items() <= labels.items(), other["metadata"]["name"]


# ----------------------------------------------------------------------------- network


def _egress_ports(rule: dict[str, Any]) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), p["port"]) for p in rule["ports"]}


def test_relay_network_policy_lets_in_scrapes_only_and_out_dns_broker_database(
    chart: Any,
) -> None:
    values = {
        "networkPolicy": {
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
            "broker": {"to": [{"podSelector": {"matchLabels": {"app": "redis"}}}],
                       "ports": [6379]},
        },
        **_relay_values(networkPolicy={
            "database": {"to": [{"ipBlock": {"cidr": "10.40.0.0/24"}}], "port": 6432},
            "extraEgress": [{"to": [{"podSelector": {"matchLabels": {"app": "otel"}}}],
                             "ports": [{"protocol": "TCP", "port": 4318}]}],
        }),
    }  # fmt: skip
    objects = _relay_objects(_rendered(chart, values))
    policy, deployment = objects["NetworkPolicy"], objects["Deployment"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    # In: the metrics port only, only from where scraping is allowed.
    assert spec["ingress"] == [
        {
            "from": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
            "ports": [{"protocol": "TCP", "port": 9100}],
        }
    ]
    dns, broker, database, extra = spec["egress"]
    assert _egress_ports(dns) == {("UDP", 53), ("TCP", 53)}
    assert dns["to"] == chart.merge_values({})["networkPolicy"]["dns"]["to"]
    assert broker == {
        "to": [{"podSelector": {"matchLabels": {"app": "redis"}}}],
        "ports": [{"protocol": "TCP", "port": 6379}],
    }
    assert database == {
        "to": [{"ipBlock": {"cidr": "10.40.0.0/24"}}],
        "ports": [{"protocol": "TCP", "port": 6432}],
    }
    assert extra == values["outboxRelay"]["networkPolicy"]["extraEgress"][0]
    validate_object(policy)


def test_relay_database_egress_defaults_to_5432_anywhere(chart: Any) -> None:
    policy = _relay_objects(_rendered(chart, ENABLED))["NetworkPolicy"]
    egress = policy["spec"]["egress"]
    # DNS, the broker (any destination, default ports), the database (any destination, 5432).
    assert len(egress) == 3
    assert _egress_ports(egress[1]) == {("TCP", 6379), ("TCP", 5672)} and "to" not in egress[1]
    assert egress[2] == {"ports": [{"protocol": "TCP", "port": 5432}]}
    # The worker pools never reach the database.
    for other in _rendered(chart, ENABLED).kind("NetworkPolicy"):
        if other["metadata"]["name"] != NAME:
            ports = {p["port"] for rule in other["spec"]["egress"] for p in rule.get("ports", [])}
            assert 5432 not in ports, other["metadata"]["name"]


# ----------------------------------------------------------------------------- scraping


@pytest.mark.parametrize(
    "values",
    [
        values_of("production-redis-values"),
        {**ENABLED, "monitoring": {"podMonitor": {"enabled": True}}},
    ],
    ids=["production-redis-values", "enabled-with-pod-monitor"],
)
def test_relay_is_scraped_like_every_other_metrics_port(chart: Any, values: dict[str, Any]) -> None:
    rendered = _rendered(chart, values)
    deployment = _relay_objects(rendered)["Deployment"]
    # The gateway's own PodMonitor (its /metrics is on its http port) aside.
    (monitor,) = [m for m in rendered.kind("PodMonitor")
                  if m["metadata"]["name"] != f"{RELEASE}-gateway"]  # fmt: skip
    template = deployment["spec"]["template"]
    # The release's one PodMonitor selects the relay's pods and scrapes their "metrics" port.
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert "metrics" in {p["name"] for p in _container(deployment)["ports"]}
    # No Prometheus annotations: the chart scrapes every component through the PodMonitor.
    assert not any(
        k.startswith("prometheus.io/") for k in template["metadata"].get("annotations", {})
    )


def test_notes_name_the_relay_only_when_it_runs(chart: Any) -> None:
    def notes(values: dict[str, Any]) -> str:
        manifests: dict[str, str] = chart.render(values, name=RELEASE, namespace=RELEASE)
        (text,) = [t for path, t in manifests.items() if path.endswith("NOTES.txt")]
        return text

    assert "outbox" not in notes({}).lower()
    text = notes(ENABLED)
    assert f"logs deploy/{NAME}" in text
    assert "registry.example.org/shop-web:2.3.1" in text


# ----------------------------------------------------------------------------- bad values


def _database(**database: Any) -> dict[str, Any]:
    return {"outboxRelay": {"networkPolicy": {"database": database}}}


BAD_SCHEMA = {
    "misspelt-key": {"outboxRelay": {"replica": 2}},
    "negative-replicas": {"outboxRelay": {"replicas": -1}},
    "command-as-a-string": {"outboxRelay": {"command": "python manage.py tasklane_relay"}},
    "empty-command": {"outboxRelay": {"command": []}},
    "database-port-out-of-range": _database(port=70000),
    "database-peers-not-a-list": _database(to="10.0.0.0/8"),
    "no-grace-period": {"outboxRelay": {"terminationGracePeriodSeconds": 0}},
    "negative-batch-size": {"outboxRelay": {"batchSize": -5}},
    "unknown-pull-policy": {"outboxRelay": {"image": {"pullPolicy": "Sometimes"}}},
    "digest-without-algorithm": {"outboxRelay": {"image": {"digest": "abc123"}}},
    "enabled-as-a-string": {"outboxRelay": {"enabled": "yes"}},
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_SCHEMA))
def test_schema_refuses_bad_relay_values(chart: Any, case: str) -> None:
    import helm_python

    with pytest.raises(helm_python.HelmValuesError, match="outboxRelay"):
        chart.validate_schema(BAD_SCHEMA[case])


def test_schema_accepts_the_documented_relay_values(chart: Any) -> None:
    # The refusals above are about their one bad key: the same shapes with good values pass.
    chart.validate_schema(
        _relay_values(replicas=0, command=["python", "manage.py", "tasklane_relay"], batchSize=1,
                      terminationGracePeriodSeconds=1,
                      networkPolicy={"database": {"port": 65535, "to": []}})
    )  # fmt: skip


@pytest.mark.parametrize(
    ("relay", "message"),
    [
        ({"image": {"repository": "", "tag": "1.0"}},
         "outboxRelay.enabled needs outboxRelay.image.repository"),
        ({"image": {"repository": "registry.example.org/shop-web", "tag": ""}},
         "outboxRelay.enabled needs outboxRelay.image.tag or outboxRelay.image.digest"),
    ],
    ids=["no-repository", "no-tag-or-digest"],
)  # fmt: skip
def test_relay_without_the_projects_image_is_refused(
    chart: Any, relay: dict[str, Any], message: str
) -> None:
    import helm_python

    values = {"outboxRelay": {"enabled": True, **relay}}
    chart.validate_schema(values)  # the schema lets them through: the message comes from fail
    with pytest.raises(helm_python.HelmRenderError) as caught:
        chart.render(values, name=RELEASE, namespace=RELEASE)
    assert message in str(caught.value)
