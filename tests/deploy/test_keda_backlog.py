"""The backlog KEDA would read from a real broker, through the rendered ScaledObject.

A pool's queues are filled with a known backlog (several priority sub-lists, some messages held
unacknowledged by a consumer), then each trigger of the rendered ScaledObject is read the way
KEDA's scaler reads it (kedacore/keda pkg/scalers/redis_scaler.go and rabbitmq_scaler.go): its
connection settings come from the rendered TriggerAuthentication and the Secret it names, the
rest from the trigger's metadata. The messages are published with the broker URL the rendered
worker pods get. The scalingModifiers formula is then evaluated: the replica count must be the
one docs/deploy.md promises, ceil(backlog / target) within min and max.
"""

from __future__ import annotations

import ast
import base64
import json
import math
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import redis  # type: ignore[import-untyped,unused-ignore]

from tasklane.contracts import SEND_EMAIL, SEND_IM, TaskContract
from tasklane.observability.exporter import read_queues
from tasklane.publish import Publisher
from tasklane.settings import Settings
from tasklane.wire.broker import connect
from tasklane.wire.routing import QueueOptions, work_queue
from tests.deploy.conftest import RELEASE, render
from tests.support import eventually

pytestmark = pytest.mark.integration

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
#: The management URL KEDA's TriggerAuthentication gets (`host`), for the vhost "/".
MANAGEMENT_HOST = "http://guest:guest@127.0.0.1:15672/"
#: Not redis_url's database: a reading of the wrong database sees nothing.
DATABASE = 11
TARGET = 10
EMAIL = {"to": ["ada@example.com"], "subject": "Hi", "text": "Hello"}
IM = {"channel": "webhook", "url": "https://hooks.example.org/x", "text": "hi"}
#: KEDA's redis scaler measures a key with this script (listLength of lists, sets, hashes).
KEDA_REDIS_SCRIPT = """
local listName = KEYS[1]
local listType = redis.call('type', listName).ok
if listType == 'zset' then
    return redis.call('zcard', listName)
elseif listType == 'set' then
    return redis.call('scard', listName)
elseif listType == 'hash' then
    return redis.call('hlen', listName)
elseif listType == 'list' or listType == 'none' then
    return redis.call('llen', listName)
else
    return redis.error_reply('ERR unsupported key type: ' .. listType)
end
"""


@dataclass(frozen=True)
class Pool:
    """The notifier pool as rendered: its ScaledObject spec, TriggerAuthentication and Secrets."""

    spec: dict[str, Any]
    objects: list[dict[str, Any]]

    def secret_value(self, name: str, key: str) -> str:
        """A key of a Secret the chart rendered."""
        (secret,) = [
            o for o in self.objects if o["kind"] == "Secret" and o["metadata"]["name"] == name
        ]
        if key in secret.get("stringData", {}):
            return str(secret["stringData"][key])
        return base64.b64decode(secret["data"][key]).decode()

    def auth_params(self, trigger: dict[str, Any]) -> dict[str, str]:
        """The trigger's authentication parameters, resolved as KEDA resolves them."""
        (auth,) = [
            o
            for o in self.objects
            if o["kind"] == "TriggerAuthentication"
            and o["metadata"]["name"] == trigger["authenticationRef"]["name"]
        ]
        return {
            ref["parameter"]: self.secret_value(ref["name"], ref["key"])
            for ref in auth["spec"]["secretTargetRef"]
        }

    def broker_url(self) -> str:
        """TASKLANE_BROKER_URL of the pool's worker pods, from the Secret it references."""
        (deployment,) = [
            o
            for o in self.objects
            if o["kind"] == "Deployment" and o["metadata"]["name"] == f"{RELEASE}-notifier"
        ]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        (env,) = [e for e in container["env"] if e["name"] == "TASKLANE_BROKER_URL"]
        ref = env["valueFrom"]["secretKeyRef"]
        return self.secret_value(ref["name"], ref["key"])


def render_pool(
    chart: Any, kind: str, namespace: str, create: dict[str, str], **scaling: Any
) -> Pool:
    """The notifier pool rendered for a broker kind, with the broker Secret made from ``create``."""
    values = {
        "tasklane": {"namespace": namespace},
        "broker": {"kind": kind, "create": {"enabled": True, **create}},
        "autoscaling": {"keda": {"redis": {"databaseIndex": DATABASE}}},
        "workers": {
            "pools": {
                "notifier": {
                    "service": "notifier",
                    "autoscaling": {
                        "targetBacklogPerReplica": TARGET,
                        "minReplicas": 1,
                        "maxReplicas": 4,
                        **scaling,
                    },
                }
            }
        },
    }
    objects = [o for objs in render(chart, values).values() for o in objs]
    (scaled,) = [
        o
        for o in objects
        if o["kind"] == "ScaledObject" and o["metadata"]["name"] == f"{RELEASE}-notifier"
    ]
    return Pool(scaled["spec"], objects)


def evaluate(formula: str, metrics: dict[str, float]) -> float:
    """The scalingModifiers formula over the trigger metrics: only sums of names are allowed."""

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return walk(node.left) + walk(node.right)
        if isinstance(node, ast.Name):
            return metrics[node.id]
        raise AssertionError(f"unexpected formula element {ast.dump(node)}")

    return walk(ast.parse(formula, mode="eval"))


def desired_replicas(spec: dict[str, Any], value: float) -> int:
    """What KEDA and the HPA make of the formula's value (AverageValue target, activation)."""
    modifiers = spec["advanced"]["scalingModifiers"]
    assert modifiers["metricType"] == "AverageValue"
    if spec["minReplicaCount"] == 0 and value <= float(modifiers["activationTarget"]):
        return 0
    wanted = math.ceil(value / float(modifiers["target"]))
    return max(max(int(spec["minReplicaCount"]), 1), min(int(spec["maxReplicaCount"]), wanted))


def publish_backlog(settings: Settings, per_priority: dict[int, int]) -> int:
    """Publish emails and IMs at several priorities; the number published."""
    total = 0
    with Publisher(settings) as publisher:
        for priority, count in per_priority.items():
            for index in range(count):
                contract: TaskContract[Any, Any] = SEND_EMAIL if index % 2 else SEND_IM
                publisher.publish(contract, EMAIL if index % 2 else IM, priority=priority)
                total += 1
    return total


@contextmanager
def held_unacked(settings: Settings, count: int) -> Iterator[None]:
    """Take ``count`` messages from notifier.email without acknowledging them, while inside."""
    with connect(settings) as connection:
        channel = connection.channel()
        queue = work_queue(SEND_EMAIL, settings.namespace, QueueOptions.of(settings))(channel)
        taken = [queue.get(no_ack=False) for _ in range(count)]
        assert all(message is not None for message in taken)
        try:
            yield
        finally:
            for message in taken:
                message.requeue()
            channel.close()


@pytest.fixture
def chart() -> Any:
    import helm_python

    from tests.deploy.conftest import CHART

    return helm_python.Chart.load(CHART)


# ----------------------------------------------------------------------------- Redis


def keda_redis_client(trigger: dict[str, Any], params: dict[str, str]) -> Any:
    """The client KEDA's redis scaler opens: address and password from the authentication,
    database and TLS from the trigger's metadata."""
    meta = trigger["metadata"]
    host, port = params["address"].rsplit(":", 1)
    return redis.Redis(
        host=host,
        port=int(port),
        db=int(meta.get("databaseIndex", "0")),
        password=params.get("password") or None,
        ssl=meta.get("enableTLS", "false") == "true",
    )


def keda_redis_metrics(pool: Pool) -> dict[str, float]:
    """Every trigger's metric, each read through its own KEDA connection."""
    metrics: dict[str, float] = {}
    for trigger in pool.spec["triggers"]:
        assert trigger["type"] == "redis"
        client = keda_redis_client(trigger, pool.auth_params(trigger))
        try:
            length = client.eval(KEDA_REDIS_SCRIPT, 1, trigger["metadata"]["listName"])
        finally:
            client.close()
        metrics[trigger["name"]] = float(length)
    return metrics


def _redis_pool(chart: Any, redis_url: str, namespace: str, **scaling: Any) -> Pool:
    """The pool rendered for Redis at redis_url's server, database DATABASE."""
    address = urllib.parse.urlsplit(redis_url).netloc
    create = {"url": f"redis://{address}/{DATABASE}", "redisAddress": address}
    return render_pool(chart, "redis", namespace, create, **scaling)


@contextmanager
def _cleaned(url: str, namespace: str) -> Iterator[Any]:
    client = redis.Redis.from_url(url)
    try:
        yield client
    finally:
        keys = list(client.scan_iter(f"*{namespace}*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_redis_backlog_is_the_sum_of_every_priority_sub_list(chart: Any, redis_url: str) -> None:
    namespace = f"k{uuid.uuid4().hex[:10]}."
    pool = _redis_pool(chart, redis_url, namespace)
    spec = pool.spec
    # The pods' broker URL names the database KEDA reads (autoscaling.keda.redis.databaseIndex).
    broker_url = pool.broker_url()
    assert {t["metadata"]["databaseIndex"] for t in spec["triggers"]} == {str(DATABASE)}
    assert urllib.parse.urlsplit(broker_url).path == f"/{DATABASE}"
    assert urllib.parse.urlsplit(redis_url).path != f"/{DATABASE}"
    settings = Settings(broker_url=broker_url, namespace=namespace)
    with _cleaned(broker_url, namespace), _cleaned(redis_url, namespace) as elsewhere:
        published = publish_backlog(settings, {0: 9, 5: 14, 9: 12})
        with held_unacked(settings, 3):
            metrics = keda_redis_metrics(pool)
            value = evaluate(spec["advanced"]["scalingModifiers"]["formula"], metrics)
            # Three priorities land in three different sub-lists per queue: one trigger alone
            # (what the HPA's max over triggers would see) is well below the backlog.
            assert sum(1 for v in metrics.values() if v) >= 4
            assert max(metrics.values()) < value
            # Waiting messages only: on Redis a reserved message sits in Kombu's unacked hash,
            # which no list length shows (docs/deploy.md: the grace period covers in-flight work).
            assert value == published - 3 == 32
            assert desired_replicas(spec, value) == math.ceil(32 / TARGET) == 4
            # tasklane exporter reads the same broker: its waiting messages of the pool's queues
            # are KEDA's backlog, and it also shows the 3 in flight that KEDA cannot see.
            queues = {f"{namespace}{SEND_EMAIL.queue}", f"{namespace}{SEND_IM.queue}"}
            stats = [q for q in read_queues(settings) if q.name in queues]
            assert {q.kind for q in stats} == {"work"} and len(stats) == 2
            assert sum(q.messages for q in stats) == value
            assert sum(q.unacked or 0 for q in stats) == 3
        formula = spec["advanced"]["scalingModifiers"]["formula"]
        assert evaluate(formula, keda_redis_metrics(pool)) == float(published)
        # Another database of the same server holds none of it.
        assert [t for t in spec["triggers"] if elsewhere.llen(t["metadata"]["listName"])] == []


def test_redis_replicas_are_bounded_and_scale_to_zero_activates(chart: Any, redis_url: str) -> None:
    namespace = f"k{uuid.uuid4().hex[:10]}."
    pool = _redis_pool(chart, redis_url, namespace, scaleToZero=True, activationBacklog=2)
    spec = pool.spec
    settings = Settings(broker_url=pool.broker_url(), namespace=namespace)

    def replicas() -> int:
        formula = spec["advanced"]["scalingModifiers"]["formula"]
        return desired_replicas(spec, evaluate(formula, keda_redis_metrics(pool)))

    with _cleaned(pool.broker_url(), namespace):
        assert spec["minReplicaCount"] == 0
        assert replicas() == 0
        publish_backlog(settings, {3: 2})
        assert replicas() == 0  # at the activation threshold, not above it
        publish_backlog(settings, {7: 1})
        assert replicas() == 1
        publish_backlog(settings, {0: 60})
        assert replicas() == 4  # ceil(63 / 10) = 7, capped by maxReplicas


# ----------------------------------------------------------------------------- RabbitMQ


def keda_rabbitmq_request(
    trigger: dict[str, Any], params: dict[str, str]
) -> urllib.request.Request:
    """The management API request KEDA's rabbitmq scaler makes for one trigger (protocol http).

    The vhost is the host URL's last path segment (`/` when empty), unless vhostName is given;
    any path before it is kept as a prefix; the credentials are the URL's user info.
    """
    meta = trigger["metadata"]
    host = meta.get("host") or params["host"]
    parsed = urllib.parse.urlsplit(host)
    protocol = meta.get("protocol") or params.get("protocol") or "auto"
    if protocol == "auto":
        protocol = "http" if parsed.scheme in ("http", "https") else "amqp"
    assert protocol == "http", f"protocol {protocol}: only the http protocol is read here"
    *prefix, last = parsed.path.split("/")
    vhost = "/" + last
    vhost_name = meta.get("vhostName") or params.get("vhostName")
    if vhost_name:
        vhost = "/" + urllib.parse.quote_plus(vhost_name)
    if vhost == "/":
        vhost = "/%2F"
    path = "/".join(part for part in prefix if part)
    base = _server(parsed) + (f"/{path}" if path else "")
    queue = urllib.parse.quote_plus(meta["queueName"])
    return urllib.request.Request(f"{base}/api/queues{vhost}/{queue}", headers=_basic_auth(parsed))


def _server(parsed: urllib.parse.SplitResult) -> str:
    """scheme://host[:port] of a URL, without its user info."""
    return f"{parsed.scheme}://{parsed.netloc.rsplit('@', 1)[-1]}"


def _basic_auth(parsed: urllib.parse.SplitResult) -> dict[str, str]:
    """The Authorization header Go's HTTP client makes of a URL's user info."""
    if not parsed.username:
        return {}
    user = urllib.parse.unquote(parsed.username)
    password = urllib.parse.unquote(parsed.password or "")
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def keda_rabbitmq_metric(trigger: dict[str, Any], params: dict[str, str]) -> float:
    """One trigger's metric as KEDA reads it: mode QueueLength is the queue's `messages` (ready
    and unacknowledged), or `messages_ready` with excludeUnacknowledged."""
    meta = trigger["metadata"]
    assert meta["mode"] == "QueueLength", meta
    with urllib.request.urlopen(keda_rabbitmq_request(trigger, params), timeout=5) as answer:
        queue = json.load(answer)
    field = "messages_ready" if meta.get("excludeUnacknowledged") == "true" else "messages"
    return float(queue.get(field, 0))


def _management_api_or_skip(pool: Pool) -> None:
    """Fail (TASKLANE_REQUIRE_RABBITMQ=1) or skip when the triggers' management API is off."""
    parsed = urllib.parse.urlsplit(pool.auth_params(pool.spec["triggers"][0])["host"])
    server = _server(parsed)
    overview = urllib.request.Request(f"{server}/api/overview", headers=_basic_auth(parsed))
    try:
        with urllib.request.urlopen(overview, timeout=5):
            return
    except (urllib.error.URLError, ConnectionError) as error:
        reason = (
            f"RabbitMQ's management API does not answer at {server} "
            f"({error}): KEDA's http protocol reads it; `rabbitmq-plugins enable "
            "rabbitmq_management` turns it on"
        )
    if os.environ.get("TASKLANE_REQUIRE_RABBITMQ"):
        pytest.fail(reason)
    pytest.skip(f"{reason} (with TASKLANE_REQUIRE_RABBITMQ=1 this fails)")


def _settled(
    read: Callable[[], dict[str, int]], expected: dict[str, int], timeout: float = 30.0
) -> dict[str, int]:
    """The management API's queue statistics once they show ``expected``.

    They are sampled every collect_statistics_interval (5 s by default), so they lag the broker;
    KEDA, polling every 15 s, reads them the same way.
    """
    seen: dict[str, int] = {}

    def shows_expected() -> dict[str, int] | None:
        seen.update(read())
        return dict(seen) if all(seen[key] == value for key, value in expected.items()) else None

    return eventually(
        shows_expected,
        timeout=timeout,
        interval=0.5,
        message=lambda: f"management API statistics {expected}, not {seen}",
    )


def test_rabbitmq_backlog_counts_unacknowledged_messages(chart: Any, redis_url: str) -> None:
    from tests.support.harness import rabbitmq_reachable

    assert rabbitmq_reachable(), "RabbitMQ must answer at 127.0.0.1:5672"
    namespace = f"k{uuid.uuid4().hex[:10]}."
    create = {"url": AMQP_URL, "resultBackend": redis_url, "rabbitmqHost": MANAGEMENT_HOST}
    pool = render_pool(chart, "rabbitmq", namespace, create)
    spec = pool.spec
    _management_api_or_skip(pool)
    settings = Settings(broker_url=pool.broker_url(), result_backend=None, namespace=namespace)
    triggers = spec["triggers"]
    queues = [t["metadata"]["queueName"] for t in triggers]
    assert queues == [f"{namespace}notifier.email", f"{namespace}notifier.im"]
    for trigger in triggers:
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"]["value"] == spec["advanced"]["scalingModifiers"]["target"]

    def statistics() -> dict[str, int]:
        found = {"messages": 0, "messages_ready": 0, "messages_unacknowledged": 0}
        for trigger in triggers:
            request = keda_rabbitmq_request(trigger, pool.auth_params(trigger))
            with urllib.request.urlopen(request, timeout=5) as answer:
                queue = json.load(answer)
            for key in found:
                found[key] += int(queue.get(key, 0))
        return found

    try:
        published = publish_backlog(settings, {0: 8, 9: 9})
        with held_unacked(settings, 3), connect(settings) as connection:
            # What protocol amqp would read: a passive declare counts ready messages only.
            channel = connection.channel()
            ready = sum(channel.queue_declare(q, passive=True).message_count for q in queues)
            assert ready == published - 3
            _settled(statistics, {"messages_ready": ready, "messages_unacknowledged": 3})
            metrics = {t["name"]: keda_rabbitmq_metric(t, pool.auth_params(t)) for t in triggers}
            value = evaluate(spec["advanced"]["scalingModifiers"]["formula"], metrics)
            # The chart's http protocol: in-flight messages keep their replicas.
            assert value == published == 17
            assert desired_replicas(spec, value) == 2
            # excludeUnacknowledged "true" would have read the ready messages only.
            excluding = [{**t, "metadata": {**t["metadata"], "excludeUnacknowledged": "true"}}
                         for t in triggers]  # fmt: skip
            assert sum(keda_rabbitmq_metric(t, pool.auth_params(t)) for t in excluding) == ready
            # tasklane exporter reads ready messages and consumers (AMQP has no unacked count).
            stats = [q for q in read_queues(settings) if q.name in queues]
            assert len(stats) == 2 and sum(q.messages for q in stats) == ready
    finally:
        with connect(settings) as connection:
            channel = connection.channel()
            for queue in queues:
                channel.queue_delete(queue)
                channel.queue_delete(f"{queue}.dlq")
                channel.exchange_delete(queue)
            channel.exchange_delete(f"{namespace}tasklane.dlx")


def test_the_management_request_is_the_one_keda_builds() -> None:
    # Expected URLs from KEDA's getVhostAndPathFromURL/getQueueInfoViaHTTP for these hosts.
    trigger = {"metadata": {"queueName": "prod.notifier.email", "mode": "QueueLength",
                            "protocol": "http"}}  # fmt: skip
    for host, url in (
        ("http://u:p%40ss@rabbit:15672/", "http://rabbit:15672/api/queues/%2F/prod.notifier.email"),
        ("http://u:p@rabbit:15672", "http://rabbit:15672/api/queues/%2F/prod.notifier.email"),
        ("http://u:p@rabbit:15672/prod", "http://rabbit:15672/api/queues/prod/prod.notifier.email"),
        ("https://u:p@ops:443/rmq/prod", "https://ops:443/rmq/api/queues/prod/prod.notifier.email"),
    ):
        assert keda_rabbitmq_request(trigger, {"host": host}).full_url == url, host
    request = keda_rabbitmq_request(trigger, {"host": "http://u:p%40ss@rabbit:15672/"})
    assert request.get_header("Authorization") == "Basic " + base64.b64encode(b"u:p@ss").decode()
    named = {"metadata": {**trigger["metadata"], "vhostName": "a/b"}}
    assert keda_rabbitmq_request(named, {"host": "http://rabbit:15672/"}).full_url == (
        "http://rabbit:15672/api/queues/a%2Fb/prod.notifier.email"
    )
    with pytest.raises(AssertionError, match="protocol amqp"):
        keda_rabbitmq_request(trigger | {"metadata": {"queueName": "q"}}, {"host": AMQP_URL})
