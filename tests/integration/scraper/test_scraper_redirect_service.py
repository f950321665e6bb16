"""Real scraper workers follow redirects only where robots.txt allows, one politeness turn a hop.

Both paths are covered: ``scraper.page.fetch`` and a crawl (``scraper.site.crawl`` over two
workers). The local sites' servers are the truth: the paths they were asked for, and when each
request to a host reached it. One request in flight per host (``MAX_CONCURRENCY=1``), so that
consecutive requests to a host never overlap.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasklane.artifacts import open_store
from tasklane.contracts.scraper import CrawlStatus
from tasklane.errors import TaskFailedError
from tasklane.publish import Publisher
from tasklane_dev.sinks import SiteServer
from tests.integration.scraper.hosts import (
    SECOND_HOST,
    SecondHostSite,
    gaps,
    html,
    paths,
    redirect,
    robots,
    too_close,
)
from tests.support import eventually
from tests.support.harness import BrokerEnv, WorkerProcess, wait_for_dead_letters

USER_AGENT = "TasklaneTestBot/1.0"
DELAY = 0.3
RULES = f"User-agent: *\nDisallow: /private/\nCrawl-delay: {DELAY}\n"


def start_workers(broker: BrokerEnv, tmp_path: Path, count: int) -> tuple[list[WorkerProcess], str]:
    artifacts_url = (tmp_path / "artifacts").as_uri()
    env = {
        **broker.env(),
        "TASKLANE_ARTIFACTS_URL": artifacts_url,
        "TASKLANE_SCRAPER_ALLOW": f"127.0.0.1/32,{SECOND_HOST}/32",
        "TASKLANE_SCRAPER_USER_AGENT": USER_AGENT,
        "TASKLANE_SCRAPER_MIN_DELAY": "0",
        "TASKLANE_SCRAPER_MAX_CONCURRENCY": "1",
        # Threads of two workers queue for one host: none must give up and retry meanwhile.
        "TASKLANE_SCRAPER_MAX_WAIT": "60",
        "TASKLANE_SCRAPER_CRAWL_BATCH": "3",
        "TASKLANE_SCRAPER_CRAWL_CONCURRENCY": "3",
    }
    workers = [
        WorkerProcess("scraper", env, tmp_path / f"scraper-{n}.log", concurrency=2)
        for n in range(count)
    ]
    for worker in workers:
        worker.wait_ready()
    return workers, artifacts_url


@pytest.fixture
def sites() -> Iterator[tuple[SiteServer, SiteServer]]:
    """A site on 127.0.0.1 whose redirects lead into its private area, along a chain, and to a
    second site on 127.0.0.2 (with its own robots.txt, private area and Crawl-delay)."""
    with SecondHostSite(
        {
            "/robots.txt": robots(RULES),
            "/landing": html("Landing", ("/elsewhere",)),
            "/private/x": html("Private there"),
        }
    ) as other:
        pages = {
            "/robots.txt": robots(RULES),
            "/": html(
                "Home",
                (
                    "/go-private",
                    "/private/direct",
                    "/chain/1",
                    "/away",
                    "/away-private",
                    "/page",
                ),
            ),
            "/go-private": redirect("/private/secret.html"),
            "/private/secret.html": html("Secret", ("/leak",)),
            "/private/direct": html("Private"),
            "/leak": html("Only linked from the private page"),
            "/chain/1": redirect("/chain/2", 301),
            "/chain/2": redirect("/chain/end", 307),
            "/chain/end": html("End of the chain"),
            "/away": redirect(f"{other.url}/landing"),
            "/away-private": redirect(f"{other.url}/private/x"),
            "/page": html("Page"),
        }
        with SiteServer(pages) as site:
            yield site, other


def assert_polite(site: SiteServer) -> None:
    """robots.txt asked for once, nothing private, each request a turn after the last."""
    assert site.hits()["/robots.txt"] == 1
    assert not [path for path in paths(site) if path.startswith("/private/")], paths(site)
    assert not too_close(site, DELAY), gaps(site)


def test_page_fetch_refuses_a_redirect_into_a_disallowed_path_and_spaces_every_hop(
    broker: BrokerEnv, tmp_path: Path, sites: tuple[SiteServer, SiteServer]
) -> None:
    site, other = sites
    (worker,), _ = start_workers(broker, tmp_path, 1)
    try:
        with Publisher(broker.settings) as publisher:
            refused = []
            for url in (
                f"{site.url}/private/secret.html",
                f"{site.url}/go-private",
                f"{other.url}/private/x",
                f"{site.url}/away-private",
            ):
                result = publisher.publish("scraper.page.fetch", {"url": url})
                with pytest.raises(TaskFailedError, match="robots.txt disallows"):
                    result.get(timeout=60)
                refused.append(result.id)
            chained = publisher.publish("scraper.page.fetch", {"url": f"{site.url}/chain/1"}).get(
                timeout=60
            )
            landed = publisher.publish("scraper.page.fetch", {"url": f"{site.url}/away"}).get(
                timeout=60
            )
        letters = {
            letter.task_id: letter
            for letter in wait_for_dead_letters(broker, "scraper.fetch", len(refused))
        }
    finally:
        worker.stop()
    direct, hop, other_direct, other_hop = (letters[task_id] for task_id in refused)
    # A hop is refused exactly as the URL it leads to is when asked for directly.
    assert direct.error_type == hop.error_type == "RobotsDisallowedError"
    assert hop.error == direct.error and other_hop.error == other_direct.error
    assert all(letter.attempts == 1 for letter in letters.values())
    assert (chained.status, chained.final_url) == (200, f"{site.url}/chain/end")
    assert (landed.status, landed.final_url) == (200, f"{other.url}/landing")
    assert paths(site).count("/go-private") == 1 and "/leak" not in paths(site)
    assert paths(site)[-4:] == ["/chain/1", "/chain/2", "/chain/end", "/away"]
    assert paths(other) == ["/robots.txt", "/landing"]
    assert_polite(site)
    assert_polite(other)


def test_crawl_records_a_redirect_into_a_disallowed_path_as_refused_and_spaces_every_hop(
    broker: BrokerEnv, tmp_path: Path, sites: tuple[SiteServer, SiteServer]
) -> None:
    site, other = sites
    workers, artifacts_url = start_workers(broker, tmp_path, 2)
    try:
        with Publisher(broker.settings) as publisher:
            crawl = publisher.publish(
                "scraper.site.crawl", {"seeds": [f"{site.url}/"], "max_depth": 3}
            ).get(timeout=30)

            def completed() -> CrawlStatus | None:
                status = publisher.publish(
                    "scraper.crawl.status", {"crawl_id": crawl.crawl_id}
                ).get(timeout=30)
                return status if status.state == "completed" else None

            final = eventually(completed, timeout=120, interval=0.2, message="the crawl to end")
    finally:
        for worker in workers:
            worker.stop()
    assert final.data_uri is not None
    lines = open_store(artifacts_url).get(final.data_uri).decode().splitlines()
    records = {json.loads(line)["url"].removeprefix(site.url): json.loads(line) for line in lines}
    refused = {path: record for path, record in records.items() if record["error"]}
    assert set(refused) == {"/go-private", "/private/direct", "/away-private"}
    assert {record["error_type"] for record in refused.values()} == {"robots-disallowed"}
    # The record of a hop names the URL robots.txt refused, as a direct refusal does.
    direct = refused["/private/direct"]["error"]
    assert refused["/go-private"]["error"] == direct.replace(
        "/private/direct", "/private/secret.html"
    )
    assert f"{other.url}/private/x" in refused["/away-private"]["error"]
    assert records["/chain/1"]["final_url"] == f"{site.url}/chain/end"
    assert records["/away"]["final_url"] == f"{other.url}/landing"
    fetched = {path for path, record in records.items() if not record["error"]}
    assert fetched == {"/", "/chain/1", "/away", "/page"}
    assert (final.fetched, final.failed) == (4, 3)
    # Nothing behind the private page was followed, and no page was asked for twice.
    assert "/leak" not in paths(site)
    assert all(count == 1 for count in site.hits().values()), site.hits()
    assert sorted(paths(other)) == ["/landing", "/robots.txt"]
    assert_polite(site)
    assert_polite(other)
