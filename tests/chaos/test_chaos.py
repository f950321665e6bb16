"""The fault suite, reduced to run with ``make test``: every scenario on both brokers, short.

The module runs every scenario once (a few at a time, the slow Redis ones first) with a few dozen
emails, one kill and 2 s outages, then checks each run's count: every published email was received
or dead-lettered, nothing arrived that no task sent, and every duplicate is one of the
crash-after-accept window, all its copies with one ``Message-ID``. ``make chaos`` runs the full
version and prints the figures (docs/chaos.md).

Known gap: on Redis, Kombu pops a message (BRPOP) and records it as unacknowledged with a second
command; a worker or server that dies between the two loses the message. Such a loss (a lost email
no worker ever logged received) makes its run an expected failure, not a pass; any other loss
fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import (
    BROKERS,
    SCENARIOS,
    Config,
    Report,
    available_scenarios,
    run_all,
    scrub_environment,
    table_row,
)
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


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], Report]]:
    brokers = list(BROKERS)
    if not rabbitmq_reachable():
        if os.environ.get("TASKLANE_REQUIRE_RABBITMQ"):
            pytest.fail(f"RabbitMQ is required but does not answer at {RABBITMQ_URL}")
        brokers.remove("rabbitmq")
    directory = Path(tmp_path_factory.mktemp("chaos"))
    with pytest.MonkeyPatch.context() as patch:
        # conftest's clean environment, for the workers this module-wide fixture starts.
        for name in scrub_environment(dict(os.environ)):
            patch.delenv(name)
        results = run_all(CONFIG, brokers, available_scenarios(), directory, jobs=JOBS)
    yield {(report.scenario, report.broker): report for report in results}


@pytest.mark.parametrize("broker", BROKERS)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_email_is_accounted_for_and_duplicates_share_their_message_id(
    reports: dict[tuple[str, str], Report], scenario: str, broker: str
) -> None:
    report = reports.get((scenario, broker))
    if report is None:
        if scenario == "netns-cut" and scenario not in {name for name, _ in reports}:
            pytest.skip("ip netns is not available (it needs root)")
        pytest.skip(f"RabbitMQ does not answer at {RABBITMQ_URL}")
    summary = f"{table_row(report)}\nnotes: {report.notes}\nduplicates: {report.duplicates}"
    assert report.error is None, summary
    assert report.faults >= 1, summary  # the fault happened
    if scenario == "kill9":
        assert report.faults == CONFIG.kills, summary
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
