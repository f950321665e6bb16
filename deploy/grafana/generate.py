"""Tasklane's Grafana dashboards, as code (grafana-foundation-sdk).

Writes one JSON file per dashboard to ``deploy/grafana/dashboards/<uid>.json`` (sorted keys,
indent 2, trailing newline), so the output is deterministic and reviewable::

    .venv/bin/python deploy/grafana/generate.py          # write the files
    .venv/bin/python deploy/grafana/generate.py --check  # exit 1 if the files differ

Never edit the JSON by hand: change this file and regenerate.

Dashboards:

* ``tasklane-fleet``: every task and queue. The ``queue`` and ``task`` variables are filled from
  the metrics (``label_values``), so a new contract appears without touching a dashboard; no panel
  names a task or a queue.
* ``tasklane-notifier``, ``tasklane-scraper``, ``tasklane-media``: the same panels, restricted to
  the service's tasks (``task=~"<service>\\..*"``) and queues (``queue=~".*<service>\\..*"``: a
  queue may carry a namespace prefix such as ``staging.``), and to its workers' ``service`` label.
* ``tasklane-beat``: ticks, the lock, schedules, fired and missed slots.

The fleet dashboard also has an Outbox row: the Django outbox and its relays.

Metric sources: workers (``tasklane.observability.metrics``), ``tasklane exporter``
(``tasklane.observability.exporter``), Beat (``tasklane.beat.scheduler.BeatMetrics``) and the
outbox relay (``tasklane.contrib.django.relay_metrics``); see docs/observability.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    dashboard,
    prometheus,
    stat,
    timeseries,
)
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as models

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "dashboards"
TAG = "tasklane"
#: Panels reference the dashboard's ``datasource`` variable, never a fixed data source.
DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
#: Grafana's rate window: at least four scrape intervals of the data source.
RATE = "$__rate_interval"
SERVICES = ("notifier", "scraper", "media")
WIDTH = 24  # Grafana's grid

# Grafana unit ids.
OPS = "ops"  # operations per second
SECONDS = "s"
COUNT = "short"
RATIO = "percentunit"
BYTES_RATE = "Bps"

Steps = Sequence[tuple[float | None, str]]
Panel = timeseries.Panel | stat.Panel | bargauge.Panel

QUEUE_VAR = 'queue=~"$queue"'
# A DLQ is named after its work queue; the variable lists work queues (``(a|b)`` when several).
DLQ_VAR = 'queue=~"(${queue})\\\\.dlq"'
# Exporter metrics without a kind label (unacked, consumers) are reported for DLQs too.
NOT_DLQ = 'queue!~".+\\\\.dlq"'


@dataclass(frozen=True)
class Scope:
    """What a task and queue dashboard shows: the whole fleet, or one service."""

    uid: str
    title: str
    description: str
    service: str | None = None

    def own(self, label: str) -> list[str]:
        """The service's own matcher of ``label`` (task or queue); none for the fleet."""
        if self.service is None:
            return []
        pattern = rf"{self.service}\\..*" if label == "task" else rf".*{self.service}\\..*"
        return [f'{label}=~"{pattern}"']

    def tasks(self) -> str:
        """Matchers of worker metrics (labels task and queue)."""
        return ", ".join([*self.own("task"), *self.own("queue"), 'task=~"$task"', QUEUE_VAR])

    def queues(self, kind: bool = False) -> str:
        """Matchers of exporter metrics of work queues; ``kind``: the metric has that label."""
        work = 'kind="work"' if kind else NOT_DLQ
        return ", ".join([work, *self.own("queue"), QUEUE_VAR])

    def dead_letter_queues(self) -> str:
        """Matchers of the DLQs of the selected work queues (``<queue>.dlq``)."""
        return ", ".join(['kind="dead-letter"', *self.own("queue"), DLQ_VAR])

    def worker_up(self) -> str:
        """The selector of ``tasklane_worker_up`` (its only label is service)."""
        if self.service is None:
            return "tasklane_worker_up"
        return f'tasklane_worker_up{{service="{self.service}"}}'


FLEET = Scope(
    uid="tasklane-fleet",
    title="Tasklane / Fleet",
    description="Every task and queue of the platform: throughput, errors, queues, latency.",
)
SERVICE_SCOPES = tuple(
    Scope(
        uid=f"tasklane-{service}",
        title=f"Tasklane / {service.capitalize()}",
        description=f"The {service} service's tasks, queues and workers.",
        service=service,
    )
    for service in SERVICES
)


# --------------------------------------------------------------------------- building blocks


def query(expr: str, legend: str | None = None, ref: str = "A") -> prometheus.Dataquery:
    """A range query (time series panels)."""
    target = prometheus.Dataquery().expr(expr).ref_id(ref).range()
    return target.legend_format(legend) if legend else target


def thresholds(steps: Steps) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps([models.Threshold(value=value, color=color) for value, color in steps])
    )


GREEN: Steps = ((None, "green"),)


def graph(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[prometheus.Dataquery],
    width: int = 12,
    height: int = 8,
) -> timeseries.Panel:
    """A time series panel; each target names its series with a legend format."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .span(width)
        .height(height)
        .fill_opacity(10)
        .legend(
            common.VizLegendOptions()
            .display_mode(common_models.LegendDisplayMode.LIST)
            .placement(common_models.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common.VizTooltipOptions()
            .mode(common_models.TooltipDisplayMode.MULTI)
            .sort(common_models.SortOrder.DESCENDING)
        )
    )
    for index, target in enumerate(targets):
        panel = panel.with_target(target.ref_id(chr(ord("A") + index)))
    return panel


def single(
    title: str, description: str, unit: str, expr: str, steps: Steps = GREEN, width: int = 3
) -> stat.Panel:
    """A stat panel of one instant value, coloured by ``steps``."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(4)
        .thresholds(thresholds(steps))
        .color_mode(common_models.BigValueColorMode.VALUE)
        .graph_mode(common_models.BigValueGraphMode.AREA)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
        .with_target(prometheus.Dataquery().expr(expr).ref_id("A").instant())
    )


def totals(title: str, description: str, targets: Sequence[prometheus.Dataquery]) -> bargauge.Panel:
    """A horizontal bar gauge of instant totals (one bar per series)."""
    panel = (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(COUNT)
        .min(0)
        .span(WIDTH)
        .height(8)
        .thresholds(thresholds(GREEN))
        .orientation(common_models.VizOrientation.HORIZONTAL)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
    )
    for index, target in enumerate(targets):
        panel = panel.with_target(target.ref_id(chr(ord("A") + index)).instant())
    return panel


@dataclass
class Board:
    """Rows and panels in order, with stable ids (1, 2, ...) assigned as they are added."""

    builder: dashboard.Dashboard
    next_id: int = field(default=1)

    def row(self, title: str) -> Board:
        self.builder = self.builder.with_row(dashboard.Row(title).id(self._id()))
        return self

    def add(self, *panels: Panel) -> Board:
        for panel in panels:
            self.builder = self.builder.with_panel(panel.id(self._id()))
        return self

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def new_board(uid: str, title: str, description: str, tags: Sequence[str]) -> Board:
    builder = (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG, *tags])
        .readonly()
        .timezone("browser")
        .time("now-3h", "now")
        .refresh("30s")
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .link(
            dashboard.DashboardLink("Tasklane")
            .type(models.DashboardLinkType.DASHBOARDS)
            .tags([TAG])
            .as_dropdown(True)
            .keep_time(True)
            .include_vars(False)
        )
        .with_variable(
            dashboard.DatasourceVariable("datasource")
            .label("Data source")
            .type("prometheus")
            .description("The Prometheus that scrapes the workers, the exporter and Beat.")
        )
    )
    return Board(builder)


def label_variable(name: str, label: str, source: str, description: str) -> dashboard.QueryVariable:
    """A multi-value variable of a label's values, with All (``.*``): new values show up alone."""
    return (
        dashboard.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(f"label_values({source}, {name})")
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(models.VariableOption(selected=True, text="All", value="$__all"))
    )


# --------------------------------------------------------------------------- task and queue boards


def overview(scope: Scope) -> list[Panel]:
    tasks, work = scope.tasks(), scope.queues(kind=True)
    started = f"sum(rate(tasklane_tasks_started_total{{{tasks}}}[{RATE}]))"
    failed = f"sum(rate(tasklane_tasks_failed_total{{{tasks}}}[{RATE}]))"
    return [
        single("Started", "Tasks started per second (workers).", OPS, started),
        single(
            "Failure ratio",
            "Final failures over starts; the TasklaneTaskFailureRatioHigh alert fires over 10 %.",
            RATIO,
            f"({failed} or vector(0)) / {started}",
            ((None, "green"), (0.05, "orange"), (0.1, "red")),
        ),
        single(
            "Waiting",
            "Messages waiting in the work queues (exporter; every priority level).",
            COUNT,
            f"sum(tasklane_queue_messages{{{work}}})",
        ),
        single(
            "Oldest message",
            "Age of the oldest waiting message (exporter, Redis only); the "
            "TasklaneOldestMessageTooOld alert fires over 10 minutes.",
            SECONDS,
            f"max(tasklane_queue_oldest_message_age_seconds{{{scope.queues()}}})",
            ((None, "green"), (300, "orange"), (600, "red")),
        ),
        single(
            "Dead letters",
            "Messages in the dead-letter queues of the selected queues (exporter).",
            COUNT,
            f"sum(tasklane_queue_messages{{{scope.dead_letter_queues()}}})",
            ((None, "green"), (1, "red")),
        ),
        single(
            "In flight",
            "Tasks running now (workers).",
            COUNT,
            f"sum(tasklane_tasks_in_flight{{{tasks}}})",
        ),
        single(
            "Workers up",
            "Worker processes (main processes) reporting tasklane_worker_up.",
            COUNT,
            f"sum({scope.worker_up()})",
            ((None, "red"), (1, "green")),
        ),
        single(
            "Exporter up",
            "1 when tasklane exporter read the broker; queue panels are blind otherwise.",
            COUNT,
            "min(tasklane_exporter_up)",
            ((None, "red"), (1, "green")),
        ),
    ]


def per_task(metric: str, scope: Scope, by: str = "task") -> str:
    return f"sum by ({by}) (rate({metric}{{{scope.tasks()}}}[{RATE}]))"


def throughput(scope: Scope) -> list[Panel]:
    return [
        graph(
            "Throughput by task",
            "Tasks started and tasks that returned a result, per second.",
            OPS,
            [
                query(per_task("tasklane_tasks_started_total", scope), "{{task}} started"),
                query(per_task("tasklane_tasks_succeeded_total", scope), "{{task}} succeeded"),
            ],
        ),
        graph(
            "Received by queue",
            "Messages workers took from each queue, per second (retries included).",
            OPS,
            [query(per_task("tasklane_tasks_received_total", scope, "queue"), "{{queue}}")],
        ),
    ]


def errors(scope: Scope) -> list[Panel]:
    ratio = (
        f"{per_task('tasklane_tasks_failed_total', scope)}\n"
        f"/ {per_task('tasklane_tasks_started_total', scope)}"
    )
    return [
        graph(
            "Failures by task",
            "Final failures (after retries) and payloads refused for breaking the contract, "
            "per second.",
            OPS,
            [
                query(per_task("tasklane_tasks_failed_total", scope), "{{task}} failed"),
                query(per_task("tasklane_tasks_rejected_total", scope), "{{task}} rejected"),
            ],
            width=6,
        ),
        graph(
            "Failure ratio by task",
            "Final failures over starts, per task (the TasklaneTaskFailureRatioHigh alert).",
            RATIO,
            [query(ratio, "{{task}}")],
            width=6,
        ),
        graph(
            "Dead letters by reason",
            "Messages sent to a dead-letter queue per second, by reason.",
            OPS,
            [query(per_task("tasklane_tasks_dead_lettered_total", scope, "reason"), "{{reason}}")],
            width=6,
        ),
        graph(
            "Retries by task",
            "Retries scheduled per second (transient errors: timeouts, 5xx, 429).",
            OPS,
            [query(per_task("tasklane_tasks_retried_total", scope), "{{task}}")],
            width=6,
        ),
    ]


def queues(scope: Scope) -> list[Panel]:
    work, any_kind = scope.queues(kind=True), scope.queues()
    return [
        graph(
            "Queue depth",
            "Messages waiting in each work queue (exporter; reserved messages not included).",
            COUNT,
            [query(f"sum by (queue) (tasklane_queue_messages{{{work}}})", "{{queue}}")],
            width=8,
        ),
        graph(
            "Oldest message age",
            "Seconds since the oldest waiting message of each work queue was published "
            "(exporter, Redis only; 0 when empty).",
            SECONDS,
            [
                query(
                    f"max by (queue) (tasklane_queue_oldest_message_age_seconds{{{any_kind}}})",
                    "{{queue}}",
                )
            ],
            width=8,
        ),
        graph(
            "Dead-letter queue depth",
            "Messages in each dead-letter queue (exporter); replay or purge with tasklane dlq.",
            COUNT,
            [
                query(
                    f"sum by (queue) (tasklane_queue_messages{{{scope.dead_letter_queues()}}})",
                    "{{queue}}",
                )
            ],
            width=8,
        ),
        graph(
            "Unacknowledged messages (Redis)",
            "Messages reserved by a worker and not yet acknowledged (exporter, Redis only: "
            "prefetched, running, or waiting for a retry countdown).",
            COUNT,
            [query(f"sum by (queue) (tasklane_queue_unacked_messages{{{any_kind}}})", "{{queue}}")],
        ),
        graph(
            "Consumers (RabbitMQ)",
            "Consumers of each queue (exporter, RabbitMQ only: Redis cannot tell).",
            COUNT,
            [query(f"sum by (queue) (tasklane_queue_consumers{{{any_kind}}})", "{{queue}}")],
        ),
    ]


def quantile(q: float, metric: str, scope: Scope, by: str = "le") -> str:
    return (
        f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{{{scope.tasks()}}}[{RATE}])))"
    )


def latency(scope: Scope) -> list[Panel]:
    wait = "tasklane_task_queue_wait_seconds"
    return [
        graph(
            "Queue wait",
            "Time from publish (the message's own timestamp) to start, over the selected "
            "tasks and queues. With tracing on, exemplars link to the publishing trace.",
            SECONDS,
            [
                query(quantile(q, wait, scope), f"p{round(q * 100)}").exemplar(True)
                for q in (0.5, 0.95, 0.99)
            ],
        ),
        graph(
            "Runtime p95 by task",
            "95th percentile of the time a task ran, per task. With tracing on, exemplars link "
            "to the trace of a task in each bucket.",
            SECONDS,
            [
                query(
                    quantile(0.95, "tasklane_task_runtime_seconds", scope, "task, le"), "{{task}}"
                ).exemplar(True)
            ],
        ),
    ]


def workers(scope: Scope) -> list[Panel]:
    return [
        graph(
            "Workers up",
            "Worker main processes running, by service (a stopped worker's series ends).",
            COUNT,
            [query(f"sum by (service) ({scope.worker_up()})", "{{service}}")],
        ),
        graph(
            "In flight by task",
            "Tasks running now, per task.",
            COUNT,
            [query(f"sum by (task) (tasklane_tasks_in_flight{{{scope.tasks()}}})", "{{task}}")],
        ),
    ]


def notifier_panels() -> list[Panel]:
    return [
        graph(
            "Deliveries by channel and outcome",
            "Delivery attempts per second: delivered, transient (retried), refused (permanent), "
            "failed; by channel (email, dingtalk, slack, webhook).",
            OPS,
            [
                query(
                    f"sum by (channel, outcome) (rate(tasklane_notifier_deliveries_total[{RATE}]))",
                    "{{channel}} {{outcome}}",
                )
            ],
        ),
    ]


def scraper_panels() -> list[Panel]:
    return [
        graph(
            "Pages by HTTP status",
            "Pages fetched per second (single fetches and crawl batches), by HTTP status.",
            OPS,
            [query(f"sum by (status) (rate(tasklane_scraper_pages_total[{RATE}]))", "{{status}}")],
        ),
        graph(
            "Bytes read",
            "Page body bytes read from the network per second.",
            BYTES_RATE,
            [query(f"sum(rate(tasklane_scraper_page_bytes_total[{RATE}]))", "bytes")],
        ),
        graph(
            "Refusals by kind",
            "URLs refused or given up per second: robots.txt, the SSRF guard (unsafe-url), size, "
            "content type, redirects, retries exhausted.",
            OPS,
            [query(f"sum by (kind) (rate(tasklane_scraper_refusals_total[{RATE}]))", "{{kind}}")],
        ),
    ]


def media_panels() -> list[Panel]:
    return [
        graph(
            "Items by outcome",
            "Media tasks finished per second, by task and outcome (ok, refused, failed).",
            OPS,
            [
                query(
                    f"sum by (task, outcome) (rate(tasklane_media_items_total[{RATE}]))",
                    "{{task}} {{outcome}}",
                )
            ],
        ),
        graph(
            "Bytes in and out",
            "Bytes read from sources (in) and written to the store (out) per second.",
            BYTES_RATE,
            [
                query(
                    f"sum by (direction) (rate(tasklane_media_bytes_total[{RATE}]))",
                    "{{direction}}",
                )
            ],
        ),
        graph(
            "Limits hit",
            "Inputs refused per second, by the limit that refused them.",
            OPS,
            [query(f"sum by (limit) (rate(tasklane_media_limits_total[{RATE}]))", "{{limit}}")],
        ),
    ]


def outbox() -> list[Panel]:
    """The Django outbox: what waits in it and what the relays send (fleet dashboard only).

    Every relay reads the same table, so the table's gauges are taken once (``max`` over relays);
    sends, lag and errors are the relays' own and add up.
    """
    return [
        graph(
            "Outbox pending rows",
            "Rows committed and not yet sent, by contract, and rows parked for good (they need "
            "the admin's action 'send again' once fixed).",
            COUNT,
            [
                query("max by (contract) (tasklane_outbox_pending_rows)", "{{contract}}"),
                query("max(tasklane_outbox_parked_rows)", "parked"),
            ],
            width=8,
        ),
        graph(
            "Outbox oldest pending age",
            "Seconds the oldest pending row has waited; TasklaneOutboxNotDraining fires when it "
            "stays over 300 s for 10 minutes.",
            SECONDS,
            [query("max(tasklane_outbox_oldest_pending_age_seconds)", "oldest pending")],
            width=8,
        ),
        graph(
            "Outbox sent by contract",
            "Rows the relays sent to the broker per second, by contract.",
            OPS,
            [
                query(
                    f"sum by (contract) (rate(tasklane_outbox_sent_total[{RATE}]))",
                    "{{contract}}",
                )
            ],
            width=8,
        ),
        graph(
            "Relay lag p95",
            "95th percentile of the time from a row's creation to its send (commit, wake-up, "
            "batch, broker).",
            SECONDS,
            [
                query(
                    "histogram_quantile(0.95, sum by (le) "
                    f"(rate(tasklane_outbox_relay_lag_seconds_bucket[{RATE}])))",
                    "p95",
                )
            ],
        ),
        graph(
            "Relay errors by reason",
            "Relay errors per second: broker-unavailable (the batch stays pending, the relay "
            "backs off) and database.",
            OPS,
            [
                query(
                    f"sum by (reason) (rate(tasklane_outbox_relay_errors_total[{RATE}]))",
                    "{{reason}}",
                )
            ],
        ),
    ]


#: Each service's own metrics (docs/observability.md, "Service metrics"), on its dashboard.
SERVICE_PANELS = {"notifier": notifier_panels, "scraper": scraper_panels, "media": media_panels}


def task_dashboard(scope: Scope) -> dashboard.Dashboard:
    """The fleet dashboard, or a service's (the same panels within the service's scope)."""
    queue_matchers = ", ".join(['kind="work"', *scope.own("queue")])
    task_matchers = ", ".join([*scope.own("task"), QUEUE_VAR])
    queues_from = f"tasklane_queue_messages{{{queue_matchers}}}"
    tasks_from = f"tasklane_tasks_received_total{{{task_matchers}}}"
    tags = ["fleet"] if scope.service is None else ["service", scope.service]
    board = new_board(scope.uid, scope.title, scope.description, tags)
    board.builder = board.builder.with_variable(
        label_variable("queue", "Queue", queues_from, "Work queues (from the exporter).")
    ).with_variable(
        label_variable("task", "Task", tasks_from, "Tasks workers received from those queues.")
    )
    sections = (
        ("Overview", overview),
        ("Throughput", throughput),
        ("Errors", errors),
        ("Queues", queues),
        ("Latency", latency),
        ("Workers", workers),
    )
    for title, section in sections:
        board.row(title).add(*section(scope))
    own = SERVICE_PANELS.get(scope.service or "")
    if own is not None:
        board.row(f"{(scope.service or '').capitalize()} service").add(*own())
    if scope.service is None:
        # Contracts of any service leave a project's outbox; its age and errors have no contract.
        board.row("Outbox").add(*outbox())
    return board.builder


# --------------------------------------------------------------------------- beat


def beat_dashboard() -> dashboard.Dashboard:
    board = new_board(
        "tasklane-beat",
        "Tasklane / Beat",
        "Beat processes: ticks, the lock (one active, the rest standby), fired and missed slots.",
        ["beat"],
    )
    board.builder = board.builder.with_variable(
        label_variable(
            "schedule",
            "Schedule",
            "tasklane_beat_fired_total",
            "Schedule entries that fired at least once.",
        )
    )
    schedule = 'schedule=~"$schedule"'
    board.row("Overview").add(
        single(
            "Last tick",
            "Seconds since the newest tick of any Beat; TasklaneBeatNotTicking fires over 60 s.",
            SECONDS,
            "time() - max(tasklane_beat_last_tick_timestamp_seconds)",
            ((None, "green"), (30, "orange"), (60, "red")),
            width=6,
        ),
        single(
            "Beats holding the lock",
            "Exactly one Beat must hold the lock; none means nothing fires.",
            COUNT,
            "sum(tasklane_beat_lock_held)",
            ((None, "red"), (1, "green"), (2, "red")),
            width=6,
        ),
        single(
            "Beat processes",
            "Beat processes reporting (the active one and the standbys).",
            COUNT,
            "count(tasklane_beat_lock_held)",
            width=6,
        ),
        single(
            "Schedules",
            "Schedule entries the active Beat knows.",
            COUNT,
            "max(tasklane_beat_schedules)",
            width=6,
        ),
    )
    board.row("Processes").add(
        graph(
            "Tick age by process",
            "Seconds since each Beat process last ticked; ticks happen several times per lock TTL.",
            SECONDS,
            [query("time() - tasklane_beat_last_tick_timestamp_seconds", "{{instance}}")],
            width=8,
        ),
        graph(
            "Lock held by process",
            "1 while a Beat process holds the lock (it is the one that fires).",
            COUNT,
            [query("max by (instance) (tasklane_beat_lock_held)", "{{instance}}")],
            width=8,
        ),
        graph(
            "Schedules by process",
            "Schedule entries each Beat process knows (a standby may lag until it is active).",
            COUNT,
            [query("max by (instance) (tasklane_beat_schedules)", "{{instance}}")],
            width=8,
        ),
    )
    board.row("Schedules").add(
        graph(
            "Fired by schedule",
            "Slots published per second, by schedule entry.",
            OPS,
            [
                query(
                    f"sum by (schedule) (rate(tasklane_beat_fired_total{{{schedule}}}[{RATE}]))",
                    "{{schedule}}",
                )
            ],
        ),
        graph(
            "Missed by schedule",
            "Slots skipped per second because no Beat was active at their time.",
            OPS,
            [
                query(
                    f"sum by (schedule) (rate(tasklane_beat_missed_total{{{schedule}}}[{RATE}]))",
                    "{{schedule}}",
                )
            ],
        ),
        totals(
            "Fired and missed in the time range",
            "Slots fired and missed per schedule entry over the dashboard's time range.",
            [
                query(
                    f"sum by (schedule) (increase(tasklane_beat_fired_total{{{schedule}}}"
                    "[$__range]))",
                    "{{schedule}} fired",
                ),
                query(
                    f"sum by (schedule) (increase(tasklane_beat_missed_total{{{schedule}}}"
                    "[$__range]))",
                    "{{schedule}} missed",
                ),
            ],
        ),
    )
    return board.builder


# --------------------------------------------------------------------------- output


def _plain(builder: Builder[Any]) -> dict[str, Any]:
    plain: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    return plain


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard as Grafana JSON, by uid."""
    built = [task_dashboard(scope) for scope in (FLEET, *SERVICE_SCOPES)] + [beat_dashboard()]
    boards = [_plain(builder) for builder in built]
    return {board["uid"]: board for board in boards}


def render(board: dict[str, Any]) -> str:
    """The file content of one dashboard: sorted keys, indent 2, trailing newline."""
    return json.dumps(board, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, including those inside collapsed rows; rows excluded."""
    for panel in board.get("panels", []):
        if panel.get("type") == "row":
            yield from panels(panel)
        else:
            yield panel


def queries(board: dict[str, Any]) -> list[str]:
    """The PromQL expression of every target of every panel, in order."""
    return [target["expr"] for panel in panels(board) for target in panel.get("targets", [])]


def variable_queries(board: dict[str, Any]) -> dict[str, str]:
    """The query of every query variable (``label_values(...)``), by variable name."""
    variables = board.get("templating", {}).get("list", [])
    return {var["name"]: var["query"] for var in variables if var.get("type") == "query"}


def differences(directory: Path = OUT_DIR) -> list[str]:
    """Files that are missing, stale or not generated: empty when the directory is current."""
    expected = {f"{uid}.json": render(board) for uid, board in dashboards().items()}
    found = {path.name for path in directory.glob("*.json")}
    problems = [f"{name}: not generated by generate.py" for name in sorted(found - set(expected))]
    for name, text in sorted(expected.items()):
        path = directory / name
        if not path.exists():
            problems.append(f"{name}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{name}: differs from what generate.py produces")
    return problems


def write(directory: Path = OUT_DIR) -> list[Path]:
    """Write every dashboard; remove JSON files of dashboards that no longer exist."""
    directory.mkdir(parents=True, exist_ok=True)
    boards = dashboards()
    for stale in directory.glob("*.json"):
        if stale.stem not in boards:
            stale.unlink()
    written = []
    for uid, board in sorted(boards.items()):
        path = directory / f"{uid}.json"
        path.write_text(render(board), encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the files differ from the generated ones"
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = differences()
        for problem in problems:
            print(f"deploy/grafana/dashboards/{problem}", file=sys.stderr)
        if problems:
            print("run: .venv/bin/python deploy/grafana/generate.py", file=sys.stderr)
        return 1 if problems else 0
    for path in write():
        print(path.relative_to(HERE.parent.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
