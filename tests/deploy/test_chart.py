"""The Helm chart rendered with the Helm v4 SDK: lint, schemas and what its objects promise."""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tasklane.contracts import REGISTRY
from tasklane.wire.broker import redis_queue_keys
from tests.deploy.conftest import (
    CHART,
    NAMESPACE,
    RELEASE,
    VALUES_NAMES,
    Rendered,
    render,
    values_of,
)
from tests.deploy.validate import (
    KUBERNETES_VERSIONS,
    closed,
    crd_validator,
    is_custom,
    kubernetes_validator,
    validate_object,
)

#: The values file with the most objects: monitoring, the celery-mixin rules, Flower, OTel.
PROD = "production-redis-values"
SCRAPER_REFUSED = [
    "169.254.169.254/32",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "127.0.0.1/32",
]


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]["template"]["spec"] if obj["kind"] == "Deployment" else obj["spec"]
    return list(spec["containers"]) + list(spec.get("initContainers", []))


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = (
        obj["spec"]["template"]["spec"] if "template" in obj["spec"] else obj["spec"]
    )
    return spec


def _queues_of(deployment: dict[str, Any]) -> list[str]:
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    queues: list[str] = command[command.index("--queues") + 1].split(",")
    return queues


def _longest_limit(queues: list[str]) -> float:
    return max(c.time_limit for c in REGISTRY if c.queue in queues)


# ----------------------------------------------------------------------------- lint and schemas


@pytest.mark.parametrize("name", VALUES_NAMES)
def test_helm_lint_strict_is_clean(name: str) -> None:
    import helm_python

    report = helm_python.lint(CHART, values_of(name), strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 1] == []


@pytest.mark.parametrize("name", VALUES_NAMES)
def test_values_meet_the_chart_schema(chart: Any, name: str) -> None:
    chart.validate_schema(values_of(name))


def test_schema_refuses_unknown_keys_anywhere(chart: Any) -> None:
    import helm_python

    for values in (
        {"bogus": 1},
        {"workers": {"defaults": {"concurency": 3}}},
        {"workers": {"pools": {"notifier": {"service": "notifier", "qeues": []}}}},
        {"beat": {"schedules": [{"name": "a", "task": "t", "schedule": {}, "cron": "x"}]}},
    ):
        with pytest.raises(helm_python.HelmValuesError, match="additional properties"):
            chart.validate_schema(values)


def test_every_object_is_valid_kubernetes(rendered: Rendered) -> None:
    for obj in rendered.objects:
        if is_custom(obj):
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validator(version, obj["apiVersion"], obj["kind"]).validate(obj)


def test_the_cached_validator_is_kubernetes_validate() -> None:
    # The shortcut above must judge like the library: same verdicts on a good and a bad object.
    good = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "a"},
            "spec": {"maxUnavailable": 1}}  # fmt: skip
    bad = {**good, "spec": {"maxUnavailable": 1, "bogus": True}}
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(good, version, strict=True)
        kubernetes_validator(version, "policy/v1", "PodDisruptionBudget").validate(good)
        with pytest.raises(jsonschema.ValidationError):
            kubernetes_validate.validate(bad, version, strict=True)
        with pytest.raises(jsonschema.ValidationError):
            kubernetes_validator(version, "policy/v1", "PodDisruptionBudget").validate(bad)


#: (values, kind, path to a mapping, its key, a misspelling of that key): each misspelling is
#: added next to the key it imitates, so an unknown field is the object's only fault.
MISSPELT_BUILTIN = [
    (PROD, "Deployment", "spec", "revisionHistoryLimit", "revisionHistoryLimt"),
    (PROD, "Deployment", "spec.template.spec", "securityContext", "securityContex"),
    (PROD, "Deployment", "spec.template.spec.containers.0", "imagePullPolicy",
     "imagePullPolcy"),
    (PROD, "Deployment",
     "spec.template.spec.containers.0.securityContext", "readOnlyRootFilesystem",
     "readOnlyRootFileSystem"),
    (PROD, "Deployment", "metadata", "labels", "label"),
    (PROD, "Service", "spec.ports.0", "targetPort", "targetport"),
    (PROD, "Ingress", "spec", "ingressClassName", "ingressClass"),
    (PROD, "NetworkPolicy", "spec", "policyTypes", "policyType"),
    (PROD, "PodDisruptionBudget", "spec", "maxUnavailable",
     "maxUnavailble"),
    (PROD, "ConfigMap", "", "data", "date"),
    (PROD, "ServiceAccount", "", "automountServiceAccountToken",
     "automountServiceAccountTokens"),
    (PROD, "Pod", "spec", "restartPolicy", "restartpolicy"),
    ("minimal-values", "Secret", "", "stringData", "stringdata"),
    ("keda-off-values", "HorizontalPodAutoscaler", "spec", "maxReplicas", "maxReplica"),
]  # fmt: skip
#: The same for the custom kinds, checked against their closed CRD schemas.
MISSPELT_CUSTOM = [
    (PROD, "ScaledObject", "spec", "advanced", "advance"),
    (PROD, "ScaledObject", "spec", "minReplicaCount", "minReplicaCont"),
    (PROD, "ScaledObject", "spec.advanced.scalingModifiers", "formula",
     "formular"),
    (PROD, "ScaledObject", "spec.triggers.0", "authenticationRef",
     "authenticationref"),
    (PROD, "ScaledObject", "metadata", "labels", "label"),
    (PROD, "TriggerAuthentication", "spec.secretTargetRef.0", "parameter",
     "parameters"),
    (PROD, "PodMonitor", "spec.podMetricsEndpoints.0", "interval",
     "intervall"),
    (PROD, "PodMonitor", "spec", "selector", "selecter"),
    (PROD, "PrometheusRule", "spec.groups.0", "rules", "rule"),
    (PROD, "PrometheusRule", "spec.groups.0.rules.0", "expr", "expression"),
]  # fmt: skip


def _with_misspelt_key(obj: dict[str, Any], path: str, key: str, misspelt: str) -> dict[str, Any]:
    """A copy of obj with ``misspelt`` added beside ``key`` (same value) in the mapping at path."""
    changed = copy.deepcopy(obj)
    node: Any = changed
    for step in path.split(".") if path else []:
        node = node[int(step)] if isinstance(node, list) else node[step]
    assert key in node, (path, key)
    node[misspelt] = copy.deepcopy(node[key])
    return changed


@pytest.mark.parametrize(
    ("name", "kind", "path", "key", "misspelt"),
    MISSPELT_BUILTIN + MISSPELT_CUSTOM,
    ids=[f"{case[1]}-{case[4]}" for case in MISSPELT_BUILTIN + MISSPELT_CUSTOM],
)
def test_strict_validation_refuses_a_misspelt_key(
    chart: Any, name: str, kind: str, path: str, key: str, misspelt: str
) -> None:
    (obj, *_) = [o for objs in _render(name, chart).values() for o in objs if o["kind"] == kind]
    validate_object(obj)  # the object as rendered is accepted
    with pytest.raises(jsonschema.ValidationError, match=f"'{misspelt}' was unexpected") as caught:
        validate_object(_with_misspelt_key(obj, path, key, misspelt))
    assert [str(step) for step in caught.value.absolute_path] == (path.split(".") if path else [])


def test_closed_crd_schemas_leave_open_what_the_api_server_leaves_open() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "items": {"type": "array",
                              "items": {"type": "object", "properties": {"a": {}}}},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                             "properties": {"b": {}}},
                    "map": {"type": "object",
                            "additionalProperties": {"type": "object", "properties": {"c": {}}}},
                    "opaque": {"type": "object"},
                },
                "anyOf": [{"properties": {"items": {}}, "required": ["items"]}, {}],
            }
        },
    }  # fmt: skip
    validator = jsonschema.Draft202012Validator(closed(schema))
    ok = {"spec": {"items": [{"a": 1}], "free": {"b": 1, "z": 1}, "map": {"k": {"c": 1}},
                   "opaque": {"anything": 1}}}  # fmt: skip
    validator.validate(ok)
    for bad in (
        {"spec": {**ok["spec"], "extra": 1}},
        {"spec": {**ok["spec"], "items": [{"a": 1, "z": 1}]}},
        {"spec": {**ok["spec"], "map": {"k": {"c": 1, "z": 1}}}},
        {"spec": ok["spec"], "status": {}},
    ):
        with pytest.raises(jsonschema.ValidationError, match="was unexpected"):
            validator.validate(bad)
    assert "additionalProperties" not in schema["properties"]  # the CRD itself is left as it is


def test_custom_resources_are_valid_against_their_crds(rendered: Rendered) -> None:
    custom = [o for o in rendered.objects if is_custom(o)]
    if (
        rendered.merged["autoscaling"]["enabled"]
        and rendered.merged["autoscaling"]["keda"]["enabled"]
    ):
        assert {o["kind"] for o in custom} >= {"ScaledObject", "TriggerAuthentication"}
    for obj in custom:
        # Strict, as the API server's field validation: unknown fields are errors.
        crd_validator(obj["apiVersion"], obj["kind"]).validate(obj)


def test_monitoring_objects_render_in_production(chart: Any) -> None:
    for name in (PROD, "production-rabbitmq-values"):
        kinds = {o["kind"] for objs in render(chart, values_of(name)).values() for o in objs}
        assert {"PodMonitor", "PrometheusRule", "ScaledObject"} <= kinds


# ----------------------------------------------------------------------------- pools and queues


def test_every_contract_queue_is_consumed_by_exactly_one_pool(rendered: Rendered) -> None:
    consumers: dict[str, list[str]] = {}
    for pool, deployment in rendered.pools().items():
        for queue in _queues_of(deployment):
            consumers.setdefault(queue, []).append(pool)
    assert consumers == {c.queue: consumers.get(c.queue, [])[:1] for c in REGISTRY}
    assert all(len(pools) == 1 for pools in consumers.values())


def test_default_pools_split_services_for_separate_sizing(rendered: Rendered) -> None:
    pools = rendered.pools()
    assert set(pools) >= {
        "notifier",
        "scraper-fetch",
        "scraper-reports",
        "media-image",
        "media-video",
    }
    assert sorted(_queues_of(pools["scraper-fetch"])) == ["scraper.crawl", "scraper.fetch"]
    assert _queues_of(pools["media-video"]) == ["media.video"]


def test_worker_command_is_explicit_and_carries_the_pool_settings(rendered: Rendered) -> None:
    for pool, deployment in rendered.pools().items():
        merged = {
            **rendered.merged["workers"]["defaults"],
            **rendered.merged["workers"]["pools"][pool],
        }
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        command = container["command"]
        assert command[:3] == ["tasklane", "worker", merged["service"]]
        assert command[command.index("--concurrency") + 1] == str(merged["concurrency"])
        assert command[command.index("--pool") + 1] == merged["pool"]
        if merged["maxTasksPerChild"]:
            assert f"--max-tasks-per-child={merged['maxTasksPerChild']}" in command
        if merged["maxMemoryPerChild"]:
            assert f"--max-memory-per-child={merged['maxMemoryPerChild']}" in command
        env = {e["name"]: e for e in container["env"]}
        assert env["TASKLANE_PREFETCH_MULTIPLIER"]["value"] == str(merged["prefetchMultiplier"])
        assert env["TASKLANE_METRICS_PORT"]["value"] == str(
            rendered.merged["tasklane"]["metricsPort"]
        )


def test_worker_metric_files_are_in_a_memory_backed_volume_of_their_own(
    rendered: Rendered,
) -> None:
    # Pool processes write these files at every task; on a disk-backed directory that costs
    # each task more CPU (docs/performance.md, section 7).
    limit = rendered.merged["security"]["metricsSizeLimit"]
    for pool, deployment in rendered.pools().items():
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        directory = {e["name"]: e for e in container["env"]}["PROMETHEUS_MULTIPROC_DIR"]["value"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert volume["emptyDir"] == {"medium": "Memory", "sizeLimit": limit}, pool
        assert not directory.startswith("/tmp/"), pool  # not inside the disk-backed /tmp


def test_grace_period_covers_the_longest_hard_time_limit(rendered: Rendered) -> None:
    for deployment in rendered.pools().values():
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= _longest_limit(_queues_of(deployment))
    video = rendered.pools()["media-video"]["spec"]["template"]["spec"]
    assert video["terminationGracePeriodSeconds"] >= 3660


def test_grace_period_leaves_the_hand_back_after_the_shutdown_timeout(rendered: Rendered) -> None:
    # SIGTERM: tasks finish for up to TASKLANE_SOFT_SHUTDOWN_TIMEOUT, then the rest are handed
    # back (docs/shutdown.md); Kubernetes' SIGKILL must come after both.
    for name, deployment in rendered.pools().items():
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        timeout = float(env["TASKLANE_SOFT_SHUTDOWN_TIMEOUT"])
        assert timeout >= _longest_limit(_queues_of(deployment)), name
        assert spec["terminationGracePeriodSeconds"] >= timeout + 15, name


def test_probes_use_livez_and_readyz_on_the_metrics_port(rendered: Rendered) -> None:
    for deployment in rendered.pools().values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert {"name": "metrics", "containerPort": rendered.merged["tasklane"]["metricsPort"],
                "protocol": "TCP"} in container["ports"]  # fmt: skip
        assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_task_events_are_on_only_when_asked_for(rendered: Rendered) -> None:
    # Off by default: Flower enables them at run time; nothing the chart runs needs them.
    wanted = rendered.merged["tasklane"]["taskEvents"]
    for deployment in rendered.pools().values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["TASKLANE_TASK_EVENTS"] == str(wanted).lower()
    if rendered.name == "default":
        assert wanted is False


def test_rabbitmq_queue_type_reaches_every_tasklane_container(chart: Any) -> None:
    def queue_types(values: dict[str, Any]) -> set[str | None]:
        found: set[str | None] = set()
        for obj in _objects(chart, values):
            if obj["kind"] not in ("Deployment", "Pod", "Job"):
                continue
            for container in _pod_spec(obj)["containers"]:
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                if "TASKLANE_BROKER_URL" in env:
                    found.add(env.get("TASKLANE_RABBITMQ_QUEUE_TYPE"))
                    if "TASKLANE_RABBITMQ_QUEUE_TYPE" in env:
                        assert env["TASKLANE_RABBITMQ_DELIVERY_LIMIT"] == "20"
        return found

    assert queue_types(values_of("production-rabbitmq-values")) == {"quorum"}
    assert queue_types({"broker": {"kind": "rabbitmq"}}) == {"quorum"}
    classic = {"broker": {"kind": "rabbitmq", "rabbitmq": {"queueType": "classic"}}}
    assert queue_types(classic) == {"classic"}
    assert queue_types({}) == {None}  # Redis: nothing to choose
    import helm_python

    with pytest.raises(helm_python.HelmValuesError):
        chart.validate_schema({"broker": {"rabbitmq": {"queueType": "mirrored"}}})


def test_redis_behind_sentinel_reaches_containers_and_keda(chart: Any) -> None:
    objects = _objects(chart, values_of("production-redis-sentinel-values"))
    tasklane_envs = [
        {e["name"]: e for e in container.get("env", [])}
        for obj in objects
        if obj["kind"] in ("Deployment", "Pod", "Job")
        for container in _pod_spec(obj)["containers"]
        if any(e["name"] == "TASKLANE_BROKER_URL" for e in container.get("env", []))
    ]
    assert tasklane_envs
    for env in tasklane_envs:
        assert env["TASKLANE_REDIS_SENTINEL_MASTER"]["value"] == "tasklane"
        password = env["TASKLANE_REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert password == {"name": "tasklane-broker", "key": "sentinel-password"}
        assert env["TASKLANE_REDIS_WAIT_REPLICAS"]["value"] == "1"
    triggers = [t for o in objects if o["kind"] == "ScaledObject" for t in o["spec"]["triggers"]]
    assert triggers and {t["type"] for t in triggers} == {"redis-sentinel"}
    assert {t["metadata"]["sentinelMaster"] for t in triggers} == {"tasklane"}
    (auth,) = [o for o in objects if o["kind"] == "TriggerAuthentication"]
    assert {(r["parameter"], r["key"]) for r in auth["spec"]["secretTargetRef"]} == {
        ("addresses", "sentinel-addresses"),
        ("sentinelPassword", "sentinel-password"),
        ("password", "redis-password"),
    }
    # Without a master name nothing changes: plain Redis, publishes wait for the master alone.
    plain = _objects(chart, values_of("production-redis-values"))
    assert not any(
        e["name"] == "TASKLANE_REDIS_WAIT_REPLICAS"
        for obj in plain
        if obj["kind"] in ("Deployment", "Pod", "Job")
        for container in _pod_spec(obj)["containers"]
        for e in container.get("env", [])
    )
    assert {
        t["type"] for o in plain if o["kind"] == "ScaledObject" for t in o["spec"]["triggers"]
    } == {"redis"}


def test_a_pool_is_a_values_entry(chart: Any) -> None:
    values = {
        "workers": {
            "pools": {
                "notifier": {"service": "notifier", "queues": ["notifier.email"]},
                "notifier-im": {"service": "notifier", "queues": ["notifier.im"], "pool": "threads",
                                "concurrency": 16, "maxMemoryPerChild": 1000000},
            }
        }
    }  # fmt: skip
    objects = [o for objs in render(chart, values).values() for o in objs]
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for kind in ("Deployment", "ScaledObject", "PodDisruptionBudget", "NetworkPolicy"):
        assert (kind, "tasklane-notifier-im") in names
    (deployment,) = [o for o in objects if o["metadata"]["name"] == "tasklane-notifier-im"
                     and o["kind"] == "Deployment"]  # fmt: skip
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--queues") + 1] == "notifier.im"
    assert command[command.index("--pool") + 1] == "threads"
    # A large number stays an integer on the command line (values pass through JSON as floats).
    assert "--max-memory-per-child=1000000" in command


def _objects(chart: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for objs in render(chart, values).values() for o in objs]


def test_a_pool_without_queues_consumes_its_services_contract_queues(chart: Any) -> None:
    # null removes a default key (Helm's coalescing): each service left with one pool, no queues.
    values = {
        "workers": {
            "pools": {
                "notifier": {"queues": None},
                "scraper-fetch": {"queues": None},
                "scraper-reports": None,
                "media-image": {"queues": None},
                "media-video": None,
            }
        }
    }
    chart.validate_schema(values)
    rendered = Rendered("no-queues", values, {}, render(chart, values))
    pools = rendered.pools()
    assert set(pools) == {"notifier", "scraper-fetch", "media-image"}
    for pool, deployment in pools.items():
        service = deployment["metadata"]["labels"]["tasklane.io/service"]
        assert _queues_of(deployment) == sorted({c.queue for c in REGISTRY.for_service(service)})
        scaled = rendered.named("ScaledObject", deployment["metadata"]["name"])
        lists = {t["metadata"]["listName"] for t in scaled["spec"]["triggers"]}
        assert lists == {key for q in _queues_of(deployment) for key in redis_queue_keys(q)}, pool
        # Its grace period covers the longest hard limit among all the service's queues.
        spec = deployment["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] >= _longest_limit(_queues_of(deployment))
    assert _queues_of(pools["media-image"]) == ["media.image", "media.video"]
    assert _queues_of(pools["scraper-fetch"]) == [
        "scraper.crawl",
        "scraper.fetch",
        "scraper.reports",
    ]


def test_pool_scheduling_settings_reach_its_pod_spec(chart: Any) -> None:
    gpu_toleration = {"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "example.org/gpu-model", "operator": "In", "values": ["l4"]}
                        ]
                    }
                ]
            }
        }
    }
    spread = [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"tasklane.io/pool": "media-video"}},
        }
    ]
    default_toleration = {"key": "workers", "operator": "Exists", "effect": "NoSchedule"}
    values = {"workers": {
        "defaults": {"nodeSelector": {"example.org/role": "workers"},
                     "tolerations": [default_toleration]},
        "pools": {"media-video": {"service": "media", "queues": ["media.video"],
                                  "nodeSelector": {"example.org/gpu": "true"},
                                  "tolerations": [gpu_toleration], "affinity": affinity,
                                  "topologySpreadConstraints": spread}},
    }}  # fmt: skip
    chart.validate_schema(values)
    rendered = Rendered("scheduling", values, {}, render(chart, values))
    for pool, deployment in rendered.pools().items():
        spec = deployment["spec"]["template"]["spec"]
        if pool == "media-video":
            # Maps merge over workers.defaults key by key (tasklane.mergeInto); lists replace.
            assert spec["nodeSelector"] == {
                "example.org/role": "workers",
                "example.org/gpu": "true",
            }
            assert spec["tolerations"] == [gpu_toleration]
            assert spec["affinity"] == affinity
            assert spec["topologySpreadConstraints"] == spread
        else:
            assert spec["nodeSelector"] == {"example.org/role": "workers"}, pool
            assert spec["tolerations"] == [default_toleration], pool
            assert "affinity" not in spec, pool
            # No constraints given: the pool's pods spread over nodes, softly.
            (constraint,) = spec["topologySpreadConstraints"]
            assert constraint["topologyKey"] == "kubernetes.io/hostname"
            assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
            assert (
                constraint["labelSelector"]["matchLabels"]
                == deployment["spec"]["selector"]["matchLabels"]
            )
        validate_object(deployment)


# ----------------------------------------------------------------------------- KEDA


def test_scaled_objects_read_every_list_of_exactly_the_pools_queues(rendered: Rendered) -> None:
    # The gateway's CPU HPA scales no pool (tests/deploy/test_chart_gateway.py).
    pool_hpas = [
        h
        for h in rendered.kind("HorizontalPodAutoscaler")
        if h["metadata"]["labels"]["app.kubernetes.io/component"] != "gateway"
    ]
    if not (
        rendered.merged["autoscaling"]["enabled"]
        and rendered.merged["autoscaling"]["keda"]["enabled"]
    ):
        assert rendered.kind("ScaledObject") == []
        assert {h["metadata"]["name"] for h in pool_hpas} == {
            d["metadata"]["name"] for d in rendered.pools().values()
        }
        return
    namespace = rendered.merged["tasklane"]["namespace"]
    redis = rendered.merged["broker"]["kind"] == "redis"
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in rendered.kind("ScaledObject")}
    assert pool_hpas == []
    for deployment in rendered.pools().values():
        spec = scaled[deployment["metadata"]["name"]]["spec"]
        queues = [namespace + q for q in _queues_of(deployment)]
        if redis:
            expected = [key for q in queues for key in redis_queue_keys(q)]
            # Behind Sentinel, KEDA asks the Sentinels for the master first.
            kind = (
                "redis-sentinel"
                if rendered.merged["broker"]["redisSentinel"]["master"]
                else "redis"
            )
            assert [t["type"] for t in spec["triggers"]] == [kind] * len(expected)
            assert [t["metadata"]["listName"] for t in spec["triggers"]] == expected
        else:
            assert [t["metadata"]["queueName"] for t in spec["triggers"]] == queues
            for trigger in spec["triggers"]:
                assert trigger["type"] == "rabbitmq"
                assert trigger["metadata"]["mode"] == "QueueLength"
                # The management API's count of ready + unacknowledged messages.
                assert trigger["metadata"]["protocol"] == "http"
                assert trigger["metadata"]["excludeUnacknowledged"] == "false"
        modifiers = spec["advanced"]["scalingModifiers"]
        # A sum of every trigger: the HPA alone would take the maximum.
        assert modifiers["formula"].split(" + ") == [t["name"] for t in spec["triggers"]]
        assert modifiers["metricType"] == "AverageValue"
        down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert down["stabilizationWindowSeconds"] >= 300
        assert all(t["authenticationRef"]["name"] == "tasklane-keda" for t in spec["triggers"])


def test_trigger_authentication_reads_a_secret(rendered: Rendered) -> None:
    for auth in rendered.kind("TriggerAuthentication"):
        refs = auth["spec"]["secretTargetRef"]
        assert refs and all(ref["name"] for ref in refs)
        broker = rendered.merged["broker"]
        if broker["kind"] != "redis":
            wanted = {"host"}
        else:
            wanted = {"addresses"} if broker["redisSentinel"]["master"] else {"address"}
        assert wanted <= {ref["parameter"] for ref in refs}


def test_scale_to_zero_and_activation(chart: Any) -> None:
    rendered = Rendered("p", {}, {}, _render(PROD, chart))
    spec = rendered.named("ScaledObject", "tasklane-media-video")["spec"]
    assert spec["minReplicaCount"] == 0
    assert spec["advanced"]["scalingModifiers"]["activationTarget"] == "0"
    assert spec["advanced"]["scalingModifiers"]["target"] == "1"
    assert spec["triggers"][0]["metadata"]["listName"] == "prod.media.video"


def _render(name: str, chart: Any) -> dict[str, list[dict[str, Any]]]:
    return render(chart, values_of(name))


# ----------------------------------------------------------------------------- Beat and friends


def test_beat_is_one_replica_recreated_with_its_lock_and_schedule_file(rendered: Rendered) -> None:
    beat = rendered.named("Deployment", f"{RELEASE}-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = beat["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["tasklane", "beat"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env["TASKLANE_BEAT_LOCK_TTL"]) >= 1
    assert env["TASKLANE_BEAT_SCHEDULE_FILE"] == "/etc/tasklane/beat/schedules.yaml"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "schedules")
    assert "subPath" not in mount  # a subPath mount would never see ConfigMap updates
    schedules = yaml.safe_load(
        rendered.named("ConfigMap", f"{RELEASE}-beat")["data"]["schedules.yaml"]
    )
    assert schedules == {"schedules": rendered.merged["beat"]["schedules"]}


def test_shared_image_components_and_schedule_api_token(rendered: Rendered) -> None:
    for name, command in (("schedule-api", "schedule-api"), ("exporter", "exporter")):
        deployment = rendered.named("Deployment", f"{RELEASE}-{name}")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["command"][:2] == ["tasklane", command]
        assert "tasklane:" in container["image"] or "tasklane@" in container["image"]
    api = rendered.named("Deployment", f"{RELEASE}-schedule-api")["spec"]["template"]["spec"]
    token = next(
        e for e in api["containers"][0]["env"] if e["name"] == "TASKLANE_SCHEDULE_API_TOKEN"
    )
    assert "secretKeyRef" in token["valueFrom"]
    assert rendered.named("Service", f"{RELEASE}-schedule-api")["spec"]["ports"][0]["port"] == 8080


def test_helm_test_pings_every_queue_of_every_pool(rendered: Rendered) -> None:
    (pod,) = [
        o for o in rendered.kind("Pod") if o["metadata"]["annotations"]["helm.sh/hook"] == "test"
    ]
    pinged = sorted(c["command"][2] for c in pod["spec"]["containers"])
    assert pinged == sorted(f"{q}.ping" for q in {c.queue for c in REGISTRY})
    for container in pod["spec"]["containers"]:
        assert container["command"][:2] == ["tasklane", "submit"]
        assert container["command"][2] in REGISTRY
        assert "--wait" in container["command"]


# ----------------------------------------------------------------------------- safety


def test_pods_are_locked_down(rendered: Rendered) -> None:
    pods = [o for o in rendered.objects if o["kind"] in ("Deployment", "Pod")]
    assert pods
    for obj in pods:
        spec = _pod_spec(obj)
        where = f"{obj['kind']} {obj['metadata']['name']}"
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] == 10001, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}} in spec["volumes"], where
        for container in _containers(obj):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], where
            assert set(container["resources"]) == {"requests", "limits"}, where
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
    for account in rendered.kind("ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


def test_a_pod_disruption_budget_per_pool(rendered: Rendered) -> None:
    budgets = {b["metadata"]["name"]: b for b in rendered.kind("PodDisruptionBudget")}
    for deployment in rendered.pools().values():
        budget = budgets[deployment["metadata"]["name"]]
        assert (
            budget["spec"]["selector"]["matchLabels"]
            == deployment["spec"]["selector"]["matchLabels"]
        )


def test_scraper_egress_refuses_cluster_and_metadata_ranges(rendered: Rendered) -> None:
    policies = {p["metadata"]["name"]: p for p in rendered.kind("NetworkPolicy")}
    for pool, deployment in rendered.pools().items():
        policy = policies[deployment["metadata"]["name"]]
        assert (
            policy["spec"]["podSelector"]["matchLabels"]
            == deployment["spec"]["selector"]["matchLabels"]
        )
        if not pool.startswith("scraper-fetch"):
            continue
        internet = [
            r for r in policy["spec"]["egress"] if any("ipBlock" in p for p in r.get("to", []))
        ]
        assert internet, "the scraper needs an internet rule"
        for rule in internet:
            for peer in rule["to"]:
                block = peer["ipBlock"]
                if ":" in block["cidr"]:
                    continue
                excepted = [ipaddress.ip_network(e) for e in block["except"]]
                for refused in map(ipaddress.ip_network, SCRAPER_REFUSED):
                    assert any(refused.subnet_of(e) for e in excepted), refused  # type: ignore[arg-type]
            assert {p["port"] for p in rule["ports"]} <= {80, 443}


def test_secrets_only_by_reference(rendered: Rendered) -> None:
    for config in rendered.kind("ConfigMap"):
        text = yaml.safe_dump(config["data"])
        for marker in ("redis://", "amqp://", "password", "TOKEN"):
            assert marker not in text, (config["metadata"]["name"], marker)
    for obj in rendered.objects:
        if obj["kind"] not in ("Deployment", "Pod"):
            continue
        for container in _containers(obj):
            for env in container.get("env", []):
                if env["name"] in ("TASKLANE_BROKER_URL", "TASKLANE_RESULT_BACKEND",
                                   "TASKLANE_SCHEDULE_API_TOKEN",
                                   "TASKLANE_FLOWER_BASIC_AUTH"):  # fmt: skip
                    assert set(env) == {"name", "valueFrom"}
                    assert "secretKeyRef" in env["valueFrom"]
    created = [s for s in rendered.kind("Secret")]
    assert bool(created) == (rendered.name == "minimal-values")


# ----------------------------------------------------------------------------- observability


def test_alerts_and_dashboards_come_from_the_repository(chart: Any) -> None:
    objects = [o for objs in _render(PROD, chart).values() for o in objs]
    rule = next(o for o in objects if o["metadata"]["name"] == f"{RELEASE}-alerts")
    source = Path(CHART).parents[1] / "prometheus" / "tasklane-alerts.yaml"
    assert rule["spec"]["groups"] == yaml.safe_load(source.read_text("utf-8"))["groups"]
    boards = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"]["labels"]
    ]
    sources = sorted((Path(CHART).parents[1] / "grafana" / "dashboards").glob("*.json"))
    assert len(boards) == len(sources)
    for board in boards:
        assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((file, text),) = board["data"].items()
        assert text == (Path(CHART).parents[1] / "grafana" / "dashboards" / file).read_text(
            "utf-8"
        ).rstrip("\n")
    # The gateway has a PodMonitor of its own (its /metrics is on its http port).
    (monitor,) = [o for o in objects if o["kind"] == "PodMonitor"
                  and o["metadata"]["name"] != f"{RELEASE}-gateway"]  # fmt: skip
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_celery_mixin_rules_are_the_repository_file_behind_their_value(
    chart: Any, rendered: Rendered
) -> None:
    name = f"{RELEASE}-celery-mixin"
    rules = [o for o in rendered.kind("PrometheusRule") if o["metadata"]["name"] == name]
    assert bool(rules) == rendered.merged["monitoring"]["celeryMixinRules"]["enabled"]
    if rendered.name == "default":
        assert rules == []
    if rendered.name != PROD:
        return
    (rule,) = rules
    source = Path(CHART).parents[1] / "prometheus" / "celery-mixin-rules.yaml"
    assert rule["spec"]["groups"] == yaml.safe_load(source.read_text("utf-8"))["groups"]
    recorded = {r["record"] for group in rule["spec"]["groups"] for r in group["rules"]}
    assert {"celery_worker_up", "celery_queue_length", "celery_task_runtime_bucket"} <= recorded
    # Picked up by the same Prometheus as the alerts (its ruleSelector).
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["labels"]["app.kubernetes.io/component"] == "celery-mixin"
    validate_object(rule)


def test_celery_mixin_rules_render_on_their_own_with_extra_labels(chart: Any) -> None:
    values = {"monitoring": {"celeryMixinRules": {"enabled": True, "labels": {"team": "sre"}}}}
    chart.validate_schema(values)
    (rule,) = [o for o in _objects(chart, values) if o["kind"] == "PrometheusRule"]
    assert rule["metadata"]["name"] == f"{RELEASE}-celery-mixin"
    assert rule["metadata"]["labels"]["team"] == "sre"
    assert rule["spec"]["groups"][0]["name"] == "tasklane-celery-mixin"
    validate_object(rule)


def test_celery_exporter_left_no_object_and_no_value(chart: Any, rendered: Rendered) -> None:
    assert [o["metadata"]["name"] for o in rendered.objects
            if "celery-exporter" in o["metadata"]["name"]] == []  # fmt: skip
    assert "celeryExporter" not in rendered.merged
    assert "celeryExporter" not in rendered.merged["images"]
    assert "CE_BROKER_URL" not in yaml.safe_dump(rendered.objects)


def test_values_that_keep_celery_exporter_switched_off_still_render(chart: Any) -> None:
    # Upgrading releases may still carry the key; only enabling it is refused.
    values = {"celeryExporter": {"enabled": False}, "images": {"celeryExporter": {"tag": "1"}}}
    chart.validate_schema(values)
    assert [o for o in _objects(chart, values) if "celery" in o["metadata"]["name"]] == []


def test_otel_settings_reach_every_tasklane_container(chart: Any) -> None:
    objects = [o for objs in _render(PROD, chart).values() for o in objs]
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        env = {e["name"]: e.get("value") for e in _containers(obj)[0]["env"]}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
        assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        assert env["OTEL_SERVICE_NAME"].startswith("tasklane-")


# ----------------------------------------------------------------------------- Flower

FLOWER_VALUES: dict[str, Any] = {
    "flower": {
        "enabled": True,
        "port": 5566,
        "basicAuth": {"existingSecret": "ops-flower", "key": "users"},
        "urlPrefix": "flower",
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "60"},
            "host": "ops.example.org",
            "path": "/flower",
            "tlsSecretName": "ops-example-org-tls",
        },
    },
}


def test_flower_is_off_by_default(rendered: Rendered) -> None:
    flower = [o for o in rendered.objects if o["metadata"]["name"] == f"{RELEASE}-flower"]
    assert bool(flower) == rendered.merged["flower"]["enabled"]
    if rendered.name == "default":
        assert flower == []


def test_flower_renders_behind_basic_auth_from_a_secret_and_its_ingress(chart: Any) -> None:
    chart.validate_schema(FLOWER_VALUES)
    rendered = Rendered("flower", FLOWER_VALUES, {}, render(chart, FLOWER_VALUES))
    name = f"{RELEASE}-flower"
    deployment = rendered.named("Deployment", name)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # The credentials never reach the command line: Flower reads them from its environment.
    assert container["command"] == ["tasklane", "flower"] and "args" not in container
    assert container["image"] == "ghcr.io/example/tasklane:0.1.0"
    env = {e["name"]: e for e in container["env"]}
    assert env["TASKLANE_FLOWER_BASIC_AUTH"] == {
        "name": "TASKLANE_FLOWER_BASIC_AUTH",
        "valueFrom": {"secretKeyRef": {"name": "ops-flower", "key": "users"}},
    }
    assert env["TASKLANE_FLOWER_PORT"]["value"] == "5566"
    assert env["TASKLANE_FLOWER_URL_PREFIX"]["value"] == "flower"
    assert container["ports"] == [{"name": "http", "containerPort": 5566, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/flower/healthcheck", "port": "http"}
    assert container["resources"] == rendered_defaults(chart)["flower"]["resources"]
    # Referenced, not created: no Secret of the chart holds Flower's credentials.
    assert rendered.kind("Secret") == []

    service = rendered.named("Service", name)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 5566, "targetPort": "http", "protocol": "TCP"}
    ]

    ingress = rendered.named("Ingress", name)
    assert ingress["metadata"]["annotations"] == FLOWER_VALUES["flower"]["ingress"]["annotations"]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [
        {"hosts": ["ops.example.org"], "secretName": "ops-example-org-tls"}
    ]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "ops.example.org"
    assert rule["http"]["paths"] == [
        {"path": "/flower", "pathType": "Prefix",
         "backend": {"service": {"name": name, "port": {"name": "http"}}}}
    ]  # fmt: skip

    policy = rendered.named("NetworkPolicy", name)
    assert {"ports": [{"protocol": "TCP", "port": 5566}]} in policy["spec"]["ingress"]
    for obj in (deployment, service, ingress, policy):
        validate_object(obj)


def test_flower_without_ingress_prefix_or_tls(chart: Any) -> None:
    values = {"flower": {"enabled": True, "basicAuth": {"existingSecret": "ops-flower"}}}
    objects = _objects(chart, values)
    assert [o for o in objects if o["kind"] == "Ingress"] == []
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"
                     and o["metadata"]["name"] == f"{RELEASE}-flower"]  # fmt: skip
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthcheck"
    names = {e["name"] for e in container["env"]}
    assert "TASKLANE_FLOWER_URL_PREFIX" not in names
    auth = next(e for e in container["env"] if e["name"] == "TASKLANE_FLOWER_BASIC_AUTH")
    assert auth["valueFrom"]["secretKeyRef"] == {"name": "ops-flower", "key": "basic-auth"}


def test_flower_demo_credentials_live_only_in_the_secret_the_chart_creates(chart: Any) -> None:
    credentials = "admin:demo-password-1234"
    values = {"flower": {"enabled": True, "basicAuth": {"create": credentials}}}
    objects = _objects(chart, values)
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    assert secret["metadata"]["name"] == f"{RELEASE}-flower"
    assert secret["stringData"] == {"basic-auth": credentials}
    assert [o["metadata"]["name"] for o in objects if credentials in yaml.safe_dump(o)] == [
        f"{RELEASE}-flower"
    ]
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"
                     and o["metadata"]["name"] == f"{RELEASE}-flower"]  # fmt: skip
    auth = next(
        e
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        if e["name"] == "TASKLANE_FLOWER_BASIC_AUTH"
    )
    assert auth["valueFrom"]["secretKeyRef"] == {"name": f"{RELEASE}-flower", "key": "basic-auth"}


def rendered_defaults(chart: Any) -> dict[str, Any]:
    """The chart's default values, merged."""
    merged: dict[str, Any] = chart.merge_values({})
    return merged


# ----------------------------------------------------------------------------- every template

#: Values that, between them, make every template render.
EVERY_TEMPLATE: dict[str, dict[str, Any]] = {
    "production-redis": values_of("production-redis-values"),
    "production-rabbitmq": values_of("production-rabbitmq-values"),
    "keda-off": values_of("keda-off-values"),
    "demo-secrets": {
        **values_of("minimal-values"),
        "flower": {"enabled": True, "basicAuth": {"create": "admin:demo-password-1234"}},
    },
}


@pytest.fixture(scope="module")
def every_template(chart: Any) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Each of EVERY_TEMPLATE rendered, by template."""
    return {name: render(chart, values) for name, values in EVERY_TEMPLATE.items()}


def test_every_template_renders_in_one_of_the_values_sets(
    chart: Any, every_template: dict[str, dict[str, list[dict[str, Any]]]]
) -> None:
    templates = {
        t["name"] for t in chart.templates if t["name"].endswith(".yaml")
    } - {"templates/check-values.yaml"}  # fmt: skip
    assert len(templates) > 25
    rendering = {path.split("/", 1)[1] for objs in every_template.values() for path in objs}
    assert templates - rendering == set()


def test_one_kind_per_template_file(
    every_template: dict[str, dict[str, list[dict[str, Any]]]],
) -> None:
    for name, by_template in every_template.items():
        for path, objects in by_template.items():
            kinds = {o["kind"] for o in objects}
            assert len(kinds) == 1, (name, path, kinds)
            # templates/<component>/<component>-<kind>.yaml
            (kind,) = kinds
            assert Path(path).stem.replace("-", "").endswith(kind.lower()), (name, path, kind)


def test_every_object_carries_the_standard_labels(
    every_template: dict[str, dict[str, list[dict[str, Any]]]],
) -> None:
    for name, by_template in every_template.items():
        for path, objects in by_template.items():
            for obj in objects:
                where = (name, path, obj["kind"], obj["metadata"]["name"])
                labels = obj["metadata"]["labels"]
                assert labels["app.kubernetes.io/name"] == "tasklane", where
                assert labels["app.kubernetes.io/instance"] == RELEASE, where
                assert labels["app.kubernetes.io/managed-by"] == "Helm", where
                assert labels["app.kubernetes.io/component"], where
                assert labels["app.kubernetes.io/part-of"] == "tasklane", where
                assert labels["helm.sh/chart"] == "tasklane-0.1.0", where


# ----------------------------------------------------------------------------- bad values


def _pools(**pools: dict[str, Any]) -> dict[str, Any]:
    return {"workers": {"pools": pools}}


BAD_VALUES = {
    "beat-replicas": ({"beat": {"replicas": 2}}, "beat.replicas is 2: run exactly one Beat"),
    "pool-without-queues": (
        _pools(notifier={"service": "notifier", "queues": []}),
        "workers.pools.notifier consumes no queues",
    ),
    "unknown-queue": (
        _pools(notifier={"service": "notifier", "queues": ["notifier.email", "notifier.fax"]}),
        'unknown queue "notifier.fax" for the notifier service; its queues: notifier.email, '
        "notifier.im",
    ),
    "queue-of-another-service": (
        _pools(
            notifier={
                "service": "notifier",
                "queues": ["notifier.email", "notifier.im", "media.image"],
            }
        ),
        'unknown queue "media.image" for the notifier service',
    ),  # fmt: skip
    "short-grace-period": (
        _pools(**{"media-video": {"service": "media", "terminationGracePeriodSeconds": 600}}),
        "workers.pools.media-video.terminationGracePeriodSeconds is 600, shorter than 3660 s",
    ),
    "grace-period-without-hand-back": (
        _pools(
            notifier={
                "service": "notifier",
                "shutdownTimeout": 60,
                "terminationGracePeriodSeconds": 70,
            }
        ),
        "workers.pools.notifier.terminationGracePeriodSeconds is 70, shorter than shutdownTimeout "
        "60 s + 15 s",
    ),  # fmt: skip
    "queue-consumed-by-two-pools": (
        _pools(**{"im-only": {"service": "notifier", "queues": ["notifier.im"]}}),
        'queue "notifier.im" is consumed by two pools, im-only and notifier',
    ),
    "queue-consumed-by-no-pool": (
        _pools(notifier={"service": "notifier", "queues": ["notifier.email"]}),
        'queue "notifier.im" (notifier.im.send) is consumed by no pool',
    ),
    "unknown-service": (
        _pools(billing={"service": "billing"}),
        'workers.pools.billing.service "billing" is not a service with contracts',
    ),
    "keda-without-authentication": (
        {"broker": {"existingSecret": ""}},
        "autoscaling.keda.enabled needs broker authentication for KEDA",
    ),
    "keda-redis-without-address": (
        {"autoscaling": {"keda": {"authentication": {"redisAddressKey": ""}}}},
        "autoscaling.keda.enabled on Redis needs autoscaling.keda.authentication.redisAddressKey",
    ),
    "rabbitmq-without-result-backend": (
        {"broker": {"kind": "rabbitmq", "resultBackendKey": ""}},
        "broker.kind rabbitmq needs broker.resultBackendKey",
    ),
    "flower-without-auth": (
        {"flower": {"enabled": True}},
        "flower.enabled needs flower.basicAuth.existingSecret",
    ),
    # Values written for the removed component, image pin included, fail naming the replacement.
    "celery-exporter-removed": (
        {
            "celeryExporter": {"enabled": True},
            "images": {"celeryExporter": {"digest": "sha256:" + "ab" * 32}},
        },
        "celeryExporter was removed from this chart: it mislabels Tasklane's queues and, on a "
        "Tasklane Redis broker, blocks remote control (Flower, celery inspect). Delete "
        "celeryExporter from your values and set monitoring.celeryMixinRules.enabled instead",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_are_refused_with_a_clear_message(chart: Any, case: str) -> None:
    import helm_python

    values, message = BAD_VALUES[case]
    chart.validate_schema(values)  # the schema lets them through: the message must come from fail
    with pytest.raises(helm_python.HelmRenderError) as caught:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(caught.value)


# ----------------------------------------------------------------------------- queue namespace


@pytest.mark.parametrize("namespace", ["", "staging.", "eu.staging.", "eu-west-1.prod.", "t1."])
def test_the_namespace_the_code_accepts_is_accepted_and_prefixes_every_queue(
    chart: Any, namespace: str
) -> None:
    from tasklane.settings import Settings

    Settings(namespace=namespace)  # the code's own rule accepts it
    values = {"tasklane": {"namespace": namespace}}
    chart.validate_schema(values)
    rendered = Rendered("namespace", values, {}, render(chart, values))
    scaled = {s["spec"]["scaleTargetRef"]["name"]: s for s in rendered.kind("ScaledObject")}
    for deployment in rendered.pools().values():
        env = {e["name"]: e.get("value") for e in _containers(deployment)[0]["env"]}
        assert env["TASKLANE_NAMESPACE"] == namespace
        # KEDA reads the namespaced lists the workers consume.
        triggers = scaled[deployment["metadata"]["name"]]["spec"]["triggers"]
        queues = [namespace + queue for queue in _queues_of(deployment)]
        assert [t["metadata"]["listName"] for t in triggers] == [
            key for queue in queues for key in redis_queue_keys(queue)
        ]


@pytest.mark.parametrize(
    "namespace", ["Prod", "Prod.", "staging", "eu.staging", ".staging.", "eu..", "-x."]
)
def test_a_namespace_the_code_refuses_is_refused_by_the_schema(chart: Any, namespace: str) -> None:
    import helm_python

    from tasklane.settings import Settings

    with pytest.raises(ValueError):
        Settings(namespace=namespace)
    with pytest.raises(helm_python.HelmValuesError, match="/tasklane/namespace"):
        chart.validate_schema({"tasklane": {"namespace": namespace}})
