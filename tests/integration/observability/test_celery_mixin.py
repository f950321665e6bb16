"""The celery-mixin's dashboards and alerts on Tasklane's metrics, through a real Prometheus.

A real ``/usr/bin/prometheus`` scrapes a real notifier worker, a real ``tasklane exporter`` and
this process's publisher metrics, and loads ``deploy/prometheus/celery-mixin-rules.yaml`` with the
mixin's own alerts (vendored in ``celery_mixin/``). After a workload with successes, a retry, a
final failure and a contract violation, every variable and panel query of the mixin's two
dashboards and every selector of its alerts must find series, but for the gaps
docs/observability.md names.
"""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kombu.connection import Connection
from prometheus_client import start_http_server

from tasklane.contracts import REGISTRY
from tasklane.publish import Publisher
from tasklane.wire.protocol import task_message
from tasklane_dev.sinks import Reply, WebhookSink, free_port
from tests.support import eventually
from tests.support.harness import (
    BrokerEnv,
    WorkerProcess,
    cleanup,
    publish_through_kombu,
    wait_for_dead_letters,
)
from tests.support.prometheus import PROMETHEUS, PrometheusApi, prometheus_binary

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "deploy" / "prometheus" / "celery-mixin-rules.yaml"
MIXIN = Path(__file__).parent / "celery_mixin"
TASKLANE = str(Path(sys.executable).with_name("tasklane"))
JOB = "tasklane-celery"
#: What Grafana's interval variables become here: every sample of this short test is inside.
WINDOW = "1m"
#: celery series with no Tasklane counterpart (docs/observability.md): their queries stay empty.
NO_COUNTERPART: set[str] = set()
#: Labels of celery series Tasklane has no counterpart for: legends naming them stay blank.
NO_LABEL = {"exception"}
#: What must be recorded before the checks start (each also proves a part of the workload).
SETTLED = (
    "sum(celery_task_sent_total) > 0",
    "sum(celery_task_succeeded_total) > 0",
    "sum(celery_task_failed_total) > 0",
    "sum(celery_task_retried_total) > 0",
    "sum(celery_task_rejected_total) > 0",
    "sum(celery_task_runtime_count) > 0",
    # The increase seen, from two samples or more: the dashboards' rate() panels show it.
    "sum(rate(celery_task_runtime_sum[1w])) > 0",
    "sum(rate(celery_task_succeeded_total[1w])) > 0",
    "sum(celery_task_queue_wait_time_count) > 0",
    "count(celery_queue_length) > 0",
    "celery_worker_up == 1",
)


def dashboards() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((MIXIN / "dashboard_queries.json").read_text())
    return loaded


def alert_expressions() -> dict[str, str]:
    groups = yaml.safe_load((MIXIN / "prometheus_alerts.yaml").read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def substitute(expr: str, job: str) -> str:
    """The mixin's variables as its dashboards resolve them here.

    cluster and namespace: no such label on a Prometheus outside Kubernetes, so their variable
    queries find no value and Grafana puts in the empty string; job: the one job the rules set;
    queue_name and task: All; the interval variables: a short window.
    """
    values = {"cluster": "", "namespace": "", "job": job, "queue_name": ".*", "task": ".*"}
    return re.sub(
        r"\$\{?(\w+)\}?",
        lambda match: WINDOW if match.group(1).startswith("__") else values[match.group(1)],
        expr,
    )


def metrics_of(expr: str) -> set[str]:
    return set(re.findall(r"\b(celery_\w+)\s*\{", expr))


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    prometheus: PrometheusApi
    broker: BrokerEnv


def _im(sink: WebhookSink, text: str) -> dict[str, Any]:
    return {"channel": "webhook", "url": f"{sink.url}/hook", "text": text}


def _workload(broker: BrokerEnv, hooks: WebhookSink) -> None:
    """Successes, a retry (429 once), a final failure (400) and a payload breaking its contract."""
    with Publisher(broker.settings) as publisher:
        hooks.script(Reply(status=400, body=b'{"error":"bad request"}'))
        publisher.publish("notifier.im.send", _im(hooks, "refused"))
        wait_for_dead_letters(broker, "notifier.im", 1)
        hooks.script(Reply(status=429, headers={"Retry-After": "1"}))
        publisher.publish("notifier.im.send", _im(hooks, "throttled")).get(timeout=30)
        for handle in [publisher.publish("notifier.im.send", _im(hooks, "ok")) for _ in range(3)]:
            handle.get(timeout=30)
    invalid = task_message("notifier.im.send", str(uuid.uuid4()), {"channel": "fax", "text": "x"})
    with Connection(broker.broker_url) as connection:
        queue = f"{broker.namespace}{REGISTRY['notifier.im.send'].queue}"
        publish_through_kombu(connection, invalid, queue)
    wait_for_dead_letters(broker, "notifier.im", 2)


def _prometheus_config(directory: Path, jobs: dict[str, int]) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES), str(MIXIN / "prometheus_alerts.yaml")],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in jobs.items()
        ],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_binary()
    tmp = tmp_path_factory.mktemp("celery-mixin")
    broker = BrokerEnv("redis", redis_url, redis_url, f"t{uuid.uuid4().hex[:10]}.")
    ports = {name: free_port() for name in ("worker", "exporter", "publisher", "prometheus")}
    processes: list[WorkerProcess] = []
    # This process publishes: its tasklane_tasks_published_total is what celery_task_sent_total
    # records, as a real upstream's would be.
    server, thread = start_http_server(ports["publisher"], addr="127.0.0.1")
    hooks = WebhookSink().start()
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):  # the processes get their settings from this test only
            if name.startswith("TASKLANE_"):
                patch.delenv(name)
        try:
            worker_env = {
                **broker.env(),
                "TASKLANE_NOTIFIER_WEBHOOK_ALLOW": "127.0.0.1/32",
                "TASKLANE_METRICS_PORT": str(ports["worker"]),
                "PROMETHEUS_MULTIPROC_DIR": str(tmp / "worker-metrics"),
            }
            worker = WorkerProcess("notifier", worker_env, tmp / "worker.log", 2)
            processes.append(worker)
            exporter_command = [TASKLANE, "exporter", "--port", str(ports["exporter"]),
                                "--interval", "1"]  # fmt: skip
            processes.append(
                WorkerProcess.from_command(exporter_command, broker.env(), tmp / "exporter.log")
            )
            jobs = {
                "tasklane-workers": ports["worker"],
                "tasklane-exporter": ports["exporter"],
                "upstream": ports["publisher"],
            }
            prometheus_command = [
                str(PROMETHEUS),
                f"--config.file={_prometheus_config(tmp, jobs)}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
            ]
            processes.append(
                WorkerProcess.from_command(prometheus_command, {}, tmp / "prometheus.log")
            )
            api = PrometheusApi(f"http://127.0.0.1:{ports['prometheus']}")
            eventually(api.ready, timeout=30, interval=0.2, message="Prometheus ready")
            worker.wait_ready()
            # Every target scraped once before the first task: a counter whose first sample is
            # already its final value shows no increase, and the dashboards' rate() panels
            # would be empty on a machine busy enough to delay that first scrape.
            eventually(
                lambda: api.query("count(up == 1) == 3"),
                timeout=60,
                interval=0.2,
                message="Prometheus to scrape the worker, the exporter and this process",
            )
            _workload(broker, hooks)
            eventually(
                lambda: all(api.query(expr) for expr in SETTLED),
                timeout=90,
                interval=0.2,
                message="Prometheus to record the workload",
            )
            yield Stack(api, broker)
        finally:
            for process in processes:
                process.stop()
            hooks.stop()
            server.shutdown()
            server.server_close()
            thread.join(5)
            cleanup(broker)


# --------------------------------------------------------------------------- the checks


def test_the_vendored_mixin_queries_are_the_ones_the_rules_are_checked_against() -> None:
    boards = dashboards()
    assert set(boards) == {"celery-tasks-overview", "celery-tasks-by-task"}
    targets = [target for board in boards.values() for target in board["targets"]]
    assert len(targets) > 60
    queried = set().union(*(metrics_of(target["expr"]) for target in targets))
    recorded = {
        rule["record"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
    }
    # Every series the dashboards query is recorded, but for the named gaps.
    assert queried - recorded == NO_COUNTERPART
    assert set().union(*map(metrics_of, alert_expressions().values())) <= recorded


def test_every_dashboard_variable_finds_its_values(stack: Stack) -> None:
    api = stack.prometheus
    namespace = stack.broker.namespace
    for uid, board in dashboards().items():
        found: dict[str, list[str]] = {}
        for name, query in board["variables"].items():
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip(), re.DOTALL)
            assert match, (uid, query)
            found[name] = api.label_values(match.group(2), substitute(match.group(1), JOB))
        # No cluster or namespace labels outside Kubernetes: the variables stay empty and match
        # the series that lack those labels.
        assert found["cluster"] == [] and found["namespace"] == [], (uid, found)
        assert found["job"] == [JOB], (uid, found)
        assert f"{namespace}notifier.im" in found["queue_name"], (uid, found)
        if "task" in found:
            assert "notifier.im.send" in found["task"], (uid, found)


def _target_problems(api: PrometheusApi) -> tuple[list[str], list[str]]:
    """Panel queries that find no series and legends naming a missing label; the empty ones
    that only read a series without counterpart."""
    problems, gaps = [], []
    for uid, board in dashboards().items():
        for target in board["targets"]:
            expr = substitute(target["expr"], JOB)
            where = f"{uid} {target['panel']!r} {target.get('legend', '')!r}"
            series = api.query(expr)
            if metrics_of(expr) & NO_COUNTERPART:
                if series:  # a counterpart arrived: map it and update docs/observability.md
                    problems.append(f"{where}: finds series, yet is listed as a gap")
                gaps.append(where)
                continue
            if not series:
                problems.append(f"{where}: no series for {expr}")
            wanted = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legend", ""))) - NO_LABEL
            for label in wanted:
                if any(label not in one["metric"] for one in series):
                    problems.append(f"{where}: legend label {label!r} missing")
    return problems, gaps


def test_every_dashboard_panel_query_finds_series_but_the_named_gaps(stack: Stack) -> None:
    left: list[str] = []

    def clear() -> bool:
        left[:] = _target_problems(stack.prometheus)[0]
        return not left

    # Scrapes of a busy machine's worker can time out (1 s): give the panels a minute.
    eventually(clear, timeout=60, interval=1, message=lambda: "panel problems:\n" + "\n".join(left))
    _, gaps = _target_problems(stack.prometheus)
    assert not gaps, gaps


def test_every_mixin_alert_selects_series_and_evaluates(stack: Stack) -> None:
    api = stack.prometheus
    selectors = {
        selector
        for expr in alert_expressions().values()
        for selector in re.findall(r"celery_\w+\{[^}]*\}", expr)
    }
    assert {selector.split("{")[0] for selector in selectors} == {
        "celery_task_failed_total",
        "celery_task_succeeded_total",
        "celery_queue_length",
        "celery_worker_up",
    }
    empty = [selector for selector in selectors if not api.query(selector)]
    assert not empty, empty
    rules = [rule for group in api.get("/api/v1/rules")["groups"] for rule in group["rules"]]
    assert {rule["name"] for rule in rules if rule["type"] == "alerting"} == set(
        alert_expressions()
    )
    broken = [
        f"{rule['name']}: {rule.get('lastError')}" for rule in rules if rule["health"] != "ok"
    ]
    assert not broken, broken


def test_the_recorded_task_series_have_the_workers_labels_and_queue_names(stack: Stack) -> None:
    api = stack.prometheus
    received = api.query('celery_task_received_total{name="notifier.im.send"}')
    assert received, "no celery_task_received_total for notifier.im.send"
    for one in received:
        labels = one["metric"]
        assert labels["job"] == JOB and labels["exported_job"] == "tasklane-workers"
        assert labels["queue_name"] == f"{stack.broker.namespace}notifier.im"
        assert labels["hostname"] == labels["instance"]  # no pod label outside Kubernetes
    failed = api.query('sum(celery_task_failed_total{name="notifier.im.send"})')
    assert float(failed[0]["value"][1]) >= 1
    # The exporter's depths and the workers' counters name queues alike: the mixin joins them.
    unknown = api.query(
        "group by (queue_name) (celery_task_received_total)"
        " unless on (queue_name) group by (queue_name) (celery_queue_length)"
    )
    assert not unknown, unknown
