"""The fault suite, reduced to run with ``make test``: every scenario on both brokers, short.

The module runs every selected scenario once (``-k`` picks scenarios and brokers; a few at a
time, the slow Redis ones first) with a few dozen emails, one kill and 2 s outages, then checks
each run's count: every published email was received or dead-lettered, nothing arrived that no
task sent, and every duplicate is one of the crash-after-accept window, all its copies with one
``Message-ID``. Any loss fails. ``make chaos`` runs the full version and prints the figures
(docs/reliability.md#fault-suite-results).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import (
    BROKERS,
    NETNS_SCENARIOS,
    SCENARIOS,
    Config,
    Report,
    available_scenarios,
    run_all,
    scrub_environment,
    table_row,
)
from tests.chaos.nodes import rabbitmq_server_available
from tests.support.harness import RABBITMQ_URL, rabbitmq_reachable

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CONFIG = Config(
    n=40,
    kills=1,
    outage=2.0,
    publish_timeout=1.0,
    # Waits for events, generous for a busy machine; never asserted as durations.
    drain_timeout=240.0,
    step_timeout=120.0,
)
#: Runs at once: the Redis runs that wait out the visibility timeout sit beside the others.
JOBS = 6


def _selected(request: pytest.FixtureRequest) -> tuple[list[str], list[str]]:
    """The scenarios and brokers of this module's tests that run (``-k`` selects among them)."""
    scenarios: set[str] = set()
    brokers: set[str] = set()
    for item in request.session.items:
        params = getattr(item, "callspec", None)
        if getattr(item, "module", None) is not request.module or params is None:
            continue
        scenarios.add(params.params["scenario"])
        brokers.add(params.params["broker"])
    return [s for s in SCENARIOS if s in scenarios], [b for b in BROKERS if b in brokers]


@pytest.fixture(scope="module")
def reports(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[tuple[str, str], Report]]:
    scenarios, brokers = _selected(request)
    if "rabbitmq" in brokers and not rabbitmq_reachable():
        if os.environ.get("TASKLANE_REQUIRE_RABBITMQ"):
            pytest.fail(f"RabbitMQ is required but does not answer at {RABBITMQ_URL}")
        brokers.remove("rabbitmq")
    directory = Path(tmp_path_factory.mktemp("chaos"))
    with pytest.MonkeyPatch.context() as patch:
        # conftest's clean environment, for the workers this module-wide fixture starts.
        for name in scrub_environment(dict(os.environ)):
            patch.delenv(name)
        available = available_scenarios()
        wanted = [name for name in scenarios if name in available]
        results = run_all(CONFIG, brokers, wanted, directory, jobs=JOBS)
    yield {(report.scenario, report.broker): report for report in results}


@pytest.mark.parametrize("broker", BROKERS)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_email_is_accounted_for_and_duplicates_share_their_message_id(
    reports: dict[tuple[str, str], Report], scenario: str, broker: str
) -> None:
    report = reports.get((scenario, broker))
    if report is None:
        if scenario in NETNS_SCENARIOS and scenario not in {name for name, _ in reports}:
            pytest.skip("ip netns is not available (it needs root)")
        pytest.skip(f"RabbitMQ does not answer at {RABBITMQ_URL}")
    summary = f"{table_row(report)}\nnotes: {report.notes}\nduplicates: {report.duplicates}"
    assert report.error is None, summary
    assert report.faults >= 1, summary  # the fault happened
    if scenario == "kill9":
        assert report.faults == CONFIG.kills, summary
    if scenario.endswith("-long"):
        # The signal came while every pool process of the stopping worker was in a delivery
        # longer than its grace.
        waiting = f"{CONFIG.concurrency} delivery(ies) of the stopping worker were waiting"
        assert any(waiting in note for note in report.notes), summary
    if scenario == "broker-restart" and broker == "rabbitmq" and rabbitmq_server_available():
        # A real restart of the run's own node, not the TCP-level cut.
        assert any(event.label == "RabbitMQ node down" for event in report.events), summary
    assert report.published == CONFIG.n, summary
    assert report.foreign == 0, summary
    # Each email once or more, or dead-lettered: none lost.
    assert report.lost_ids == [], summary
    # All accounted for, and in the end nothing left in the broker.
    assert report.drain is not None, summary
    assert report.settled is not None, summary
    assert report.once + report.twice + report.lost + report.dead - report.dead_delivered == (
        CONFIG.n
    ), summary
    # Duplicates: all copies with one Message-ID, so counting by Message-ID agrees; and each has
    # more copies than attempts the workers logged as delivered: the others were cut off after
    # the SMTP server accepted, before the idempotency record (the crash-after-accept window).
    assert report.same_message_id is not False, summary
    assert report.duplicate_message_ids == report.twice, summary
    assert report.in_window == report.twice, summary
