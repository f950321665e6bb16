"""The Grafana dashboards (deploy/grafana) and the alert rules against a real Prometheus.

A real ``/usr/bin/prometheus`` scrapes, every second, real notifier, scraper and media workers, a
real ``tasklane exporter``, a real ``tasklane beat`` on a Redis broker and a real outbox relay
(``manage.py tasklane_relay`` of a throwaway Django project on PostgreSQL), and loads the alert
rules. A small workload makes every metric exist: successes, a retry, a permanent failure, a
payload that breaks its contract (all dead-lettered) in each service, a Beat schedule that fires
and misses slots while Beat is frozen, messages left waiting behind a slow webhook, and a task
published through the outbox and sent by the relay.

Then every panel query of every dashboard, every variable query, every metric selector of every
alert expression and every label they group, join or name a legend by must find series, so a
misspelt metric or label fails here rather than as an empty panel or a silent alert.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
import yaml
from kombu.connection import Connection
from kombu.messaging import Producer
from PIL import Image
from psycopg import sql

from tasklane.beat.client import Schedules
from tasklane.beat.models import IntervalSchedule, ScheduleEntry
from tasklane.contracts import REGISTRY
from tasklane.publish import Publisher, TaskHandle
from tasklane.wire.protocol import CONTENT_ENCODING, CONTENT_TYPE, task_message
from tasklane_dev.sinks import Reply, SiteServer, WebhookSink, free_port
from tests.support import eventually
from tests.support.harness import BrokerEnv, WorkerProcess, cleanup, wait_for_dead_letters
from tests.support.prometheus import PROMETHEUS, PrometheusApi, prometheus_binary

ROOT = Path(__file__).resolve().parents[3]
GENERATOR = ROOT / "deploy" / "grafana" / "generate.py"
DASHBOARD_DIR = ROOT / "deploy" / "grafana" / "dashboards"
RULES = ROOT / "deploy" / "prometheus" / "tasklane-alerts.yaml"
TASKLANE = str(Path(sys.executable).with_name("tasklane"))
#: What Grafana's interval variables become here: every sample of this short test is inside.
WINDOW = "1m"
#: Seconds the checks may wait for Prometheus to see what the workload did.
SETTLE = 30.0
#: Where the outbox project's database is created and dropped.
POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
#: The Django project whose outbox the relay drains: the contrib app and nothing else.
OUTBOX_SETTINGS = """\
import os

SECRET_KEY = "tasklane-dashboard-tests"
USE_TZ = True
INSTALLED_APPS = ["tasklane.contrib.django"]
DATABASES = {{"default": {{"ENGINE": "django.db.backends.postgresql", "NAME": {database!r},
                           "HOST": "127.0.0.1", "PORT": "5432", "USER": "postgres"}}}}
# The broker comes from TASKLANE_*; the contract is known, so its gauge exists from the start.
TASKLANE = {{"OUTBOX": True, "CONTRACTS": ["scraper.page.fetch"], "RELAY_POLL_INTERVAL": 0.5}}
"""
#: Selectors that cannot find series on the Redis broker this test runs on; keep it minimal.
OTHER_BROKER_ONLY = {
    # RabbitMQ only: a passive queue_declare counts consumers; Redis's BRPOP leaves no trace.
    "tasklane_queue_consumers": "RabbitMQ only",
}


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tasklane_grafana_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


grafana = _load_generator()


# --------------------------------------------------------------------------- PromQL, just enough

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    |(?P<braces>\{(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^}"'])*\})
    |(?P<range>\[[^\]]*\])
    |(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
    |(?P<number>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)
    |(?P<other>\S)
    """,
    re.VERBOSE,
)
#: Keywords followed by a list of label names.
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
#: Names that are neither metrics nor functions.
_KEYWORDS = {"and", "or", "unless", "bool", "inf", "nan"}


@dataclass
class Promql:
    """The metric selectors of an expression and the labels it groups or joins by."""

    selectors: list[str] = field(default_factory=list)
    labels: set[str] = field(default_factory=set)


def _label_list(tokens: list[tuple[str, str]], start: int, into: set[str]) -> int:
    """Collect the names of ``( a, b )`` starting at ``start``; the index after it."""
    end = start + 1
    while end < len(tokens) and tokens[end][1] != ")":
        if tokens[end][0] == "name":
            into.add(tokens[end][1])
        end += 1
    return end + 1


def parse_promql(expr: str) -> Promql:
    """Selectors (``metric{...}``, ``metric``, ``{...}``) and grouping labels of ``expr``.

    promtool has no "list selectors" command; this tokenizer knows strings, label matchers,
    range brackets, function calls (a name before ``(``) and the grouping keywords.
    """
    expr = re.sub(r"\boffset\s+-?\w+", " ", expr)
    tokens = [(str(m.lastgroup), m.group()) for m in _TOKEN.finditer(expr)]
    found = Promql()
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        after = tokens[index + 1] if index + 1 < len(tokens) else ("", "")
        if kind == "name" and text in _GROUPING:
            index = _label_list(tokens, index + 1, found.labels) if after[1] == "(" else index + 1
            continue
        # A name before "(" calls a function; before "by"/"without" it is an aggregation.
        if kind == "name" and text not in _KEYWORDS and after[1] not in ("(", "by", "without"):
            braces = after[1] if after[0] == "braces" else ""
            found.selectors.append(text + braces)
            index += 2 if braces else 1
            continue
        if kind == "braces":
            found.selectors.append(text)
        index += 1
    return found


def metric_name(selector: str) -> str:
    match = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", selector)
    return match.group() if match else selector


def substitute(expr: str) -> str:
    """Grafana's variables as a dashboard shows them with All selected and a short range."""
    return re.sub(
        r"\$\{?(\w+)\}?",
        lambda match: WINDOW if match.group(1).startswith("__") else ".*",
        expr,
    )


def legend_labels(legend: str | None) -> set[str]:
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend or ""))


def alert_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {
        rule.get("alert") or rule["record"]: rule["expr"]
        for group in groups
        for rule in group["rules"]
    }


def test_promql_parser_finds_selectors_and_grouping_labels() -> None:
    parsed = parse_promql(
        'sum by (queue) (rate(a_total{x="y}", z=~"w\\\\..*"}[5m])) > 0\n'
        "unless on (queue) group_left (task) histogram_quantile(0.9, b_bucket offset 5m)"
        ' or absent(c) and time() - max(d{e="}"}) > bool 1e3'
    )
    assert parsed.selectors == ['a_total{x="y}", z=~"w\\\\..*"}', "b_bucket", "c", 'd{e="}"}']
    assert parsed.labels == {"queue", "task"}


# --------------------------------------------------------------------------- generated JSON


def test_generate_check_passes_and_the_generator_is_deterministic() -> None:
    done = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    first, second = grafana.dashboards(), grafana.dashboards()
    assert first == second
    assert {path.stem for path in DASHBOARD_DIR.glob("*.json")} == set(first)
    assert {"tasklane-fleet", "tasklane-beat"} <= set(first)
    assert {f"tasklane-{service}" for service in grafana.SERVICES} <= set(first)


def _check_variables(board: dict[str, Any]) -> list[str]:
    variables = {var["name"]: var for var in board["templating"]["list"]}
    problems = []
    source = variables.get("datasource", {})
    if source.get("type") != "datasource" or source.get("query") != "prometheus":
        problems.append("no Prometheus `datasource` variable")
    wanted = ["queue", "task"] if board["uid"] != "tasklane-beat" else ["schedule"]
    for name in wanted:
        var = variables.get(name, {})
        shape = (var.get("type"), var.get("multi"), var.get("includeAll"), var.get("allValue"))
        if shape != ("query", True, True, ".*"):
            problems.append(f"${name}: not a multi-value query variable with All (.*): {shape}")
        elif not str(var.get("query", "")).startswith("label_values("):
            problems.append(f"${name}: not filled by label_values()")
    return problems


def _check_panel(panel: dict[str, Any]) -> list[str]:
    name = f"panel {panel.get('id')} {panel.get('title')!r}"
    problems = []
    if panel.get("datasource") != {"type": "prometheus", "uid": "${datasource}"}:
        problems.append(f"{name}: not on the $datasource variable")
    if not panel.get("description"):
        problems.append(f"{name}: no description")
    if not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
        problems.append(f"{name}: no unit")
    targets = panel.get("targets") or []
    refs = [target.get("refId") for target in targets]
    if not targets or not all(target.get("expr") for target in targets):
        problems.append(f"{name}: no query")
    if len(set(refs)) != len(refs) or None in refs:
        problems.append(f"{name}: missing or repeated refIds {refs}")
    pos = panel.get("gridPos", {})
    if pos.get("x", 0) + pos.get("w", 0) > 24 or pos.get("h", 0) < 1:
        problems.append(f"{name}: outside the grid {pos}")
    return problems


def _check_selectors(board: dict[str, Any]) -> list[str]:
    """Every selector of a task or queue metric honours the $task and $queue variables."""
    if board["uid"] == "tasklane-beat":
        return []
    problems = []
    for expr in grafana.queries(board):
        for selector in parse_promql(expr).selectors:
            name = metric_name(selector)
            needs = []
            if name.startswith(("tasklane_tasks_", "tasklane_task_")):
                needs = ['task=~"$task"', 'queue=~"$queue"']
            elif name.startswith("tasklane_queue_"):
                needs = ['queue=~"$queue"' if "dead-letter" not in selector else "${queue}"]
            problems += [f"{selector}: no {need}" for need in needs if need not in selector]
    return problems


def _check_board(board: dict[str, Any], stem: str) -> list[str]:
    problems = [] if board.get("uid") == stem else [f"uid {board.get('uid')!r} is not {stem!r}"]
    problems += [] if board.get("title") else ["no title"]
    problems += [] if "tasklane" in board.get("tags", []) else ["no tasklane tag"]
    ids = [panel["id"] for panel in board["panels"]]
    problems += [] if len(set(ids)) == len(ids) else [f"repeated panel ids {ids}"]
    panels = list(grafana.panels(board))
    problems += [] if panels else ["no panels"]
    for panel in panels:
        problems += _check_panel(panel)
    return problems + _check_variables(board) + _check_selectors(board)


def test_every_dashboard_is_valid_grafana_json() -> None:
    problems = [
        f"{path.name}: {problem}"
        for path in sorted(DASHBOARD_DIR.glob("*.json"))
        for problem in _check_board(json.loads(path.read_text()), path.stem)
    ]
    assert not problems, "\n".join(problems)


def _matcher_regexes(board: dict[str, Any], label: str) -> set[str]:
    """The fixed regexes (no variable) a dashboard's queries match ``label`` with."""
    found = set()
    for expr in [*grafana.queries(board), *grafana.variable_queries(board).values()]:
        for raw in re.findall(rf'\b{label}=~"((?:[^"\\]|\\.)*)"', expr):
            if "$" not in raw:
                found.add(json.loads(f'"{raw}"'))  # PromQL strings escape like JSON's
    return found


def test_dashboards_follow_the_contracts_without_naming_them() -> None:
    boards = grafana.dashboards()
    fleet_board = boards["tasklane-fleet"]
    fleet = "\n".join(
        [*grafana.queries(fleet_board), *grafana.variable_queries(fleet_board).values()]
    )
    named = [c.name for c in REGISTRY if c.name in fleet] + [
        c.queue for c in REGISTRY if c.queue in fleet
    ]
    assert not named, f"the fleet dashboard names tasks or queues: {named}"
    for contract in REGISTRY:
        service = contract.service
        board = boards.get(f"tasklane-{service}")
        assert board is not None, f"{contract.name}: no dashboard for the {service} service"
        assert contract.name not in "\n".join(grafana.queries(board))
        (tasks,) = _matcher_regexes(board, "task")
        (queues,) = _matcher_regexes(board, "queue")
        assert re.fullmatch(tasks, contract.name), (tasks, contract.name)
        for queue in (contract.queue, f"staging.{contract.queue}", f"t1.{contract.queue}.dlq"):
            assert re.fullmatch(queues, queue), (queues, queue)
        for other in REGISTRY:
            if not other.name.startswith(f"{service}."):
                assert not re.fullmatch(tasks, other.name), (tasks, other.name)
                assert not re.fullmatch(queues, f"staging.{other.queue}"), (queues, other.queue)


# --------------------------------------------------------------------------- a real Prometheus


@dataclass
class Stack:
    """What the module's fixture started, for the tests to query."""

    prometheus: PrometheusApi
    broker: BrokerEnv
    targets: int


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def _prometheus_config(directory: Path, jobs: dict[str, list[int]]) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [{"targets": [f"127.0.0.1:{port}" for port in ports]}],
            }
            for job, ports in jobs.items()
        ],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _send_invalid(broker: BrokerEnv, task: str, kwargs: dict[str, Any]) -> None:
    """A message whose payload breaks the contract, as a non-Python publisher might send."""
    queue = f"{broker.namespace}{REGISTRY[task].queue}"
    message = task_message(task, str(uuid.uuid4()), kwargs)
    with Connection(broker.broker_url) as conn:
        Producer(conn.default_channel).publish(
            message.body,
            exchange="",
            routing_key=queue,
            headers=message.headers,
            content_type=CONTENT_TYPE,
            content_encoding=CONTENT_ENCODING,
            **message.properties,
        )


@dataclass
class Services:
    """The processes and servers of the stack, stopped in the right order."""

    processes: dict[str, WorkerProcess] = field(default_factory=dict)
    sinks: list[WebhookSink | SiteServer] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)

    def stop(self) -> None:
        for sink in self.sinks:  # first: a worker stuck on the slow webhook is released
            sink.stop()
        for process in self.processes.values():
            if process.process.poll() is None:  # a frozen Beat would not see SIGTERM
                os.killpg(process.process.pid, signal.SIGCONT)
            process.stop()
        if not self.databases:
            return
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            for database in self.databases:  # after the relay, its last user
                drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                admin.execute(drop.format(sql.Identifier(database)))

    def logs(self, lines: int = 25) -> str:
        """The end of every process's output, to explain a failed start."""
        return "\n".join(
            f"--- {name}:\n" + "\n".join(process.output().splitlines()[-lines:])
            for name, process in self.processes.items()
        )


def outbox_env(broker: BrokerEnv, tmp: Path) -> dict[str, str]:
    """The environment of ``python -m django`` in the outbox project (tmp/outbox_settings.py)."""
    return {
        **broker.env(),
        "DJANGO_SETTINGS_MODULE": "outbox_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp), str(ROOT)]),
    }


def _start_relay(services: Services, broker: BrokerEnv, tmp: Path, port: int) -> None:
    """A database of the test's own, migrated, and ``manage.py tasklane_relay`` on it."""
    database = f"tasklane_dashboards_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    services.databases.append(database)
    (tmp / "outbox_settings.py").write_text(OUTBOX_SETTINGS.format(database=database))
    env = outbox_env(broker, tmp)
    django = [sys.executable, "-m", "django"]
    subprocess.run([*django, "migrate", "--no-input"], env={**os.environ, **env}, check=True,
                   capture_output=True)  # fmt: skip
    services.processes["outbox-relay"] = WorkerProcess.from_command(
        [*django, "tasklane_relay", "--metrics-port", str(port)], env, tmp / "outbox-relay.log"
    )


def _publish_through_the_outbox(broker: BrokerEnv, tmp: Path, site: SiteServer) -> None:
    """One fetch written to the outbox in a committed transaction, for the relay to send."""
    code = (
        "from django.db import transaction\n"
        "from tasklane.contrib.django import publish_on_commit\n"
        "with transaction.atomic():\n"
        f"    publish_on_commit('scraper.page.fetch', {{'url': '{site.url}/ok'}})\n"
    )
    subprocess.run([sys.executable, "-m", "django", "shell", "-c", code],
                   env={**os.environ, **outbox_env(broker, tmp)}, check=True,
                   capture_output=True)  # fmt: skip


def _start(services: Services, broker: BrokerEnv, tmp: Path) -> dict[str, list[int]]:
    """Start the workers, the exporter, Beat and the outbox relay; the ports Prometheus scrapes,
    by job."""
    names = ("notifier", "scraper", "media", "exporter", "beat", "outbox-relay")
    ports = {name: free_port() for name in names}
    service_env = {
        "notifier": {
            "TASKLANE_NOTIFIER_WEBHOOK_ALLOW": "127.0.0.1/32",
            "TASKLANE_NOTIFIER_WEBHOOK_TIMEOUT": "60",  # the slow webhook keeps a backlog
        },
        "scraper": {"TASKLANE_SCRAPER_ALLOW": "127.0.0.1/32", "TASKLANE_SCRAPER_MIN_DELAY": "0.2"},
        "media": {
            "TASKLANE_MEDIA_ALLOW": "127.0.0.1/32",
            "TASKLANE_ARTIFACTS_URL": (tmp / "artifacts").as_uri(),
            "TASKLANE_MEDIA_WORK_DIR": str(tmp),
        },
    }
    for service, extra in service_env.items():
        env = {
            **broker.env(),
            **extra,
            "TASKLANE_METRICS_PORT": str(ports[service]),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"{service}-metrics"),
        }
        services.processes[service] = WorkerProcess(service, env, tmp / f"{service}.log", 2)
    services.processes["exporter"] = WorkerProcess.from_command(
        [TASKLANE, "exporter", "--port", str(ports["exporter"]), "--interval", "1"],
        broker.env(),
        tmp / "exporter.log",
    )
    beat_env = {"TASKLANE_METRICS_PORT": str(ports["beat"]), "TASKLANE_BEAT_LOCK_TTL": "2"}
    services.processes["beat"] = WorkerProcess.from_command(
        [TASKLANE, "beat"], {**broker.env(), **beat_env}, tmp / "beat.log"
    )
    _start_relay(services, broker, tmp, ports["outbox-relay"])
    return {
        "tasklane-workers": [ports["notifier"], ports["scraper"], ports["media"]],
        "tasklane-exporter": [ports["exporter"]],
        "tasklane-beat": [ports["beat"]],
        "tasklane-outbox-relay": [ports["outbox-relay"]],
    }


def _im(sink: WebhookSink, text: str) -> dict[str, Any]:
    return {"channel": "webhook", "url": f"{sink.url}/hook", "text": text}


def _scraper_and_media(publisher: Publisher, broker: BrokerEnv, site: SiteServer) -> list[Any]:
    """Successes and a retry (503 once), a refusal and a contract violation, in each service."""
    handles: list[TaskHandle[Any]] = [
        publisher.publish("scraper.page.fetch", {"url": f"{site.url}/{page}"})
        for page in ("ok", "flaky")
    ]
    handles += [
        publisher.publish(
            "media.image.thumbnail",
            {"source": f"{site.url}/{name}", "sizes": [{"width": 16, "height": 16}]},
        )
        for name in ("ok.png", "flaky.png")
    ]
    # Refused by the SSRF guard, and a page that is no image: the services' refusal counters.
    publisher.publish("scraper.page.fetch", {"url": "http://10.255.255.1/"})
    publisher.publish(
        "media.image.thumbnail", {"source": f"{site.url}/ok", "sizes": [{"width": 8, "height": 8}]}
    )
    _send_invalid(broker, "scraper.page.fetch", {"url": 42})
    _send_invalid(broker, "media.image.thumbnail", {"sizes": []})
    return handles


def _notifier(publisher: Publisher, broker: BrokerEnv, hooks: WebhookSink) -> None:
    """A permanent failure (400), a retry (429 once), successes and a contract violation."""
    hooks.script(Reply(status=400, body=b'{"error":"bad request"}'))
    publisher.publish("notifier.im.send", _im(hooks, "refused"))
    wait_for_dead_letters(broker, "notifier.im", 1)
    hooks.script(Reply(status=429, headers={"Retry-After": "1"}))
    publisher.publish("notifier.im.send", _im(hooks, "throttled")).get(timeout=30)
    for handle in [publisher.publish("notifier.im.send", _im(hooks, "ok")) for _ in range(3)]:
        handle.get(timeout=30)
    _send_invalid(broker, "notifier.im.send", {"channel": "fax", "text": "x"})
    wait_for_dead_letters(broker, "notifier.im", 2)


def _workload(
    services: Services, broker: BrokerEnv, hooks: WebhookSink, site: SiteServer, tmp: Path
) -> None:
    beat_hooks = WebhookSink().start()  # Beat's messages must not take the scripted replies
    services.sinks.append(beat_hooks)
    beat = services.processes["beat"]
    # First, so the relay has the whole workload's time to send it.
    _publish_through_the_outbox(broker, tmp, site)
    with Schedules(broker.settings) as schedules, Publisher(broker.settings) as publisher:
        schedules.add(
            ScheduleEntry(
                name="tick",
                task="notifier.im.send",
                payload=_im(beat_hooks, "tick"),
                schedule=IntervalSchedule(every=1),
            )
        )
        for service in ("notifier", "scraper", "media"):
            services.processes[service].wait_ready()
        pending = _scraper_and_media(publisher, broker, site)
        _notifier(publisher, broker, hooks)
        eventually(
            lambda: schedules.show("tick").state.total_run_count >= 1,
            timeout=30,
            interval=0.2,
            message="Beat firing",
        )
        # Frozen past the lock's TTL: the slots of that time are missed, then Beat resumes.
        os.killpg(beat.process.pid, signal.SIGSTOP)
        frozen = time.monotonic()
        for handle in pending:
            handle.get(timeout=30)
        wait_for_dead_letters(broker, "scraper.fetch", 2)
        wait_for_dead_letters(broker, "media.image", 2)
        time.sleep(max(0.0, frozen + 3.5 - time.monotonic()))
        os.killpg(beat.process.pid, signal.SIGCONT)
        # Two deliveries hang on the webhook (concurrency 2): what follows waits in the queue.
        hooks.script(Reply(delay=60), Reply(delay=60))
        for index in range(6):
            publisher.publish("notifier.im.send", _im(hooks, f"waiting {index}"))


#: What must be visible before the checks start (each also proves a part of the workload).
SETTLED = (
    "tasklane_beat_missed_total > 0",
    "count(count by (task) (tasklane_tasks_retried_total)) >= 3",
    "count(count by (task) (tasklane_tasks_rejected_total)) >= 3",
    "sum(tasklane_tasks_in_flight) > 0",
    'sum(tasklane_queue_messages{kind="work"}) > 0',
    "max(tasklane_queue_oldest_message_age_seconds) > 0",
    "sum(tasklane_outbox_sent_total) > 0",
)


def _settled(api: PrometheusApi, targets: int) -> bool:
    if len(api.query("up == 1")) < targets:
        return False
    return all(api.query(expr) for expr in SETTLED)


def _bring_up(services: Services, broker: BrokerEnv, tmp: Path) -> tuple[PrometheusApi, int]:
    """Sinks, processes, Prometheus and the workload; Prometheus and its target count."""
    hooks = WebhookSink().start()
    services.sinks.append(hooks)
    page = Reply(body=b"<html><title>ok</title><body><a href='/ok'>ok</a></body></html>")
    image = Reply(body=_png(), headers={"Content-Type": "image/png"})
    busy = Reply(status=503, headers={"Retry-After": "1"})
    site = SiteServer(
        {"/ok": page, "/flaky": [busy, page], "/ok.png": image, "/flaky.png": [busy, image]}
    ).start()
    services.sinks.append(site)
    jobs = _start(services, broker, tmp)
    port = free_port()
    services.processes["prometheus"] = WorkerProcess.from_command(
        [
            str(PROMETHEUS),
            f"--config.file={_prometheus_config(tmp, jobs)}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        {},
        tmp / "prometheus.log",
    )
    api = PrometheusApi(f"http://127.0.0.1:{port}")
    eventually(api.ready, timeout=30, interval=0.2, message="Prometheus ready")
    _workload(services, broker, hooks, site, tmp)
    targets = sum(len(ports) for ports in jobs.values())
    eventually(
        lambda: _settled(api, targets),
        timeout=SETTLE,
        interval=0.2,
        message="Prometheus to see the workload",
    )
    return api, targets


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_binary()
    tmp = tmp_path_factory.mktemp("dashboards")
    broker = BrokerEnv("redis", redis_url, redis_url, f"t{uuid.uuid4().hex[:10]}.")
    services = Services()
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):  # the processes get their settings from this test only
            if name.startswith("TASKLANE_"):
                patch.delenv(name)
        try:
            try:
                api, targets = _bring_up(services, broker, tmp)
            except (Exception, pytest.fail.Exception) as exc:
                raise AssertionError(f"{exc}\n{services.logs()}") from exc
            yield Stack(api, broker, targets)
        finally:
            services.stop()
            cleanup(broker)


def no_problems(problems: Callable[[], list[str]], timeout: float = 10.0) -> None:
    """Wait until ``problems`` finds none (rate windows fill up); fail listing those left."""
    left: list[str] = []

    def none_left() -> bool:
        left[:] = problems()
        return not left

    eventually(
        none_left,
        timeout=timeout,
        interval=1,
        message=lambda: "the problems to clear, left:\n" + "\n".join(left),
    )


def _skipped(expr: str) -> bool:
    return any(metric_name(s) in OTHER_BROKER_ONLY for s in parse_promql(expr).selectors)


def _selector_problems(api: PrometheusApi, expr: str) -> list[str]:
    """Each selector of ``expr`` finds series; each label it groups by is on one of them."""
    parsed = parse_promql(expr)
    problems, labels = [], set()
    for selector in parsed.selectors:
        series = api.query(selector)  # valid PromQL even where skipped
        if not series and metric_name(selector) not in OTHER_BROKER_ONLY:
            problems.append(f"{selector}: no series")
        labels |= {label for one in series for label in one["metric"]}
    missing = parsed.labels - labels
    if missing and not _skipped(expr):
        problems.append(f"{expr}: no selector has the label(s) {sorted(missing)}")
    return problems


def _panel_problems(api: PrometheusApi, board: dict[str, Any]) -> list[str]:
    problems = []
    for panel in grafana.panels(board):
        for target in panel["targets"]:
            expr = substitute(target["expr"])
            where = f"{panel['title']!r} {target['refId']}"
            series = api.query(expr)
            if _skipped(expr):
                continue
            if not series:
                problems.append(f"{where}: no series for {expr}")
            for label in legend_labels(target.get("legendFormat")):
                if any(label not in one["metric"] for one in series):
                    problems.append(f"{where}: legend label {label!r} missing from {expr}")
            problems += [f"{where}: {problem}" for problem in _selector_problems(api, expr)]
    return problems


@pytest.mark.parametrize("uid", sorted(grafana.dashboards()))
def test_every_panel_query_finds_series(stack: Stack, uid: str) -> None:
    board = grafana.dashboards()[uid]
    no_problems(lambda: _panel_problems(stack.prometheus, board))


def _variable_values(api: PrometheusApi, variable_query: str) -> list[str]:
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable_query.strip(), re.DOTALL)
    assert match, f"not label_values(selector, label): {variable_query}"
    return api.label_values(match.group(2), substitute(match.group(1)))


def test_every_variable_query_finds_values(stack: Stack) -> None:
    api, namespace = stack.prometheus, stack.broker.namespace
    values: dict[tuple[str, str], list[str]] = {}

    def problems() -> list[str]:
        for uid, board in grafana.dashboards().items():
            for name, variable_query in grafana.variable_queries(board).items():
                values[uid, name] = _variable_values(api, variable_query)
        return [f"{uid} ${name}: no values" for (uid, name), found in values.items() if not found]

    no_problems(problems)
    fleet_queues, fleet_tasks = values["tasklane-fleet", "queue"], values["tasklane-fleet", "task"]
    assert {f"{namespace}{contract.queue}" for contract in REGISTRY} <= set(fleet_queues)
    assert not [queue for queue in fleet_queues if queue.endswith(".dlq")]
    assert {"notifier.im.send", "scraper.page.fetch", "media.image.thumbnail"} <= set(fleet_tasks)
    for service in grafana.SERVICES:
        assert values[f"tasklane-{service}", "task"], service
        assert all(task.startswith(f"{service}.") for task in values[f"tasklane-{service}", "task"])
        assert all(f".{service}." in queue for queue in values[f"tasklane-{service}", "queue"])
    assert values["tasklane-beat", "schedule"] == ["tick"]


def test_every_alert_selector_finds_series_and_every_rule_evaluates(stack: Stack) -> None:
    api = stack.prometheus
    expressions = alert_expressions()
    for expr in expressions.values():
        api.query(expr)  # accepted by the API, whether or not it fires now
    no_problems(
        lambda: [
            f"{name}: {problem}"
            for name, expr in expressions.items()
            for problem in _selector_problems(api, expr)
        ]
    )
    rules = [rule for group in api.get("/api/v1/rules")["groups"] for rule in group["rules"]]
    assert {rule["name"] for rule in rules} == set(expressions)
    broken = [
        f"{rule['name']}: {rule.get('lastError')}" for rule in rules if rule["health"] != "ok"
    ]
    assert not broken, broken


def test_workers_and_the_exporter_name_queues_alike(stack: Stack) -> None:
    """Alerts and panels join worker and exporter metrics on ``queue``: the values must agree."""
    api = stack.prometheus
    workers = '{__name__=~"tasklane_tasks?_.+", queue!=""}'
    unknown_to_exporter = api.query(
        f"group by (queue) ({workers})"
        ' unless on (queue) group by (queue) (tasklane_queue_messages{kind="work"})'
    )
    assert not unknown_to_exporter, [one["metric"] for one in unknown_to_exporter]
    unknown = api.query(f'group by (__name__, task, queue) ({workers[:-1]}, task="unknown"}})')
    assert not unknown, [one["metric"] for one in unknown]
