"""Crawls with real scraper workers over a local site: bounds, de-duplication, status, reports."""

from __future__ import annotations

import csv
import io
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tasklane.artifacts import open_store
from tasklane.contracts.scraper import CrawlStatus
from tasklane.publish import Publisher
from tasklane_dev.sinks import Reply, SiteServer, free_port
from tests.support import eventually
from tests.support.harness import BrokerEnv, WorkerProcess

PAGES = 40


def graph() -> dict[str, list[str]]:
    """The site's links: / -> /p/1../p/5; /p/i -> /p/2i, /p/2i+1 (when they exist) and /."""
    links = {"/": [f"/p/{i}" for i in range(1, 6)]}
    for i in range(1, PAGES + 1):
        links[f"/p/{i}"] = [f"/p/{j}" for j in (2 * i, 2 * i + 1) if j <= PAGES] + ["/"]
    return links


def page(path: str, targets: list[str], price: str) -> bytes:
    anchors = "".join(f'<a href="{target}">{target}</a> ' for target in targets)
    # An off-site link and a fragment of the page itself must never be fetched.
    extra = '<a href="http://example.invalid/x">away</a> <a href="#top">top</a>'
    return (
        f"<html><head><title>Page {path}</title></head><body>"
        f'<span class="price">{price}</span>{anchors}{extra}</body></html>'
    ).encode()


def bfs(links: dict[str, list[str]], max_depth: int) -> list[list[str]]:
    """Paths by level, as a breadth-first crawl from / reaches them."""
    levels, seen = [["/"]], {"/"}
    while len(levels) <= max_depth:
        following = sorted({t for p in levels[-1] for t in links[p] if t not in seen})
        if not following:
            break
        seen.update(following)
        levels.append(following)
    return levels


@pytest.fixture
def site() -> Iterator[SiteServer]:
    links = graph()
    pages = {
        path: Reply(body=page(path, targets, f"{index}.50"), delay=0.02)
        for index, (path, targets) in enumerate(sorted(links.items()))
    }
    pages["/robots.txt"] = Reply(
        body=b"User-agent: *\nAllow: /\n", headers={"Content-Type": "text/plain"}
    )
    with SiteServer(pages) as serving:
        yield serving


@pytest.fixture
def artifacts_url(tmp_path: Path) -> str:
    return (tmp_path / "artifacts").as_uri()


def start_scrapers(
    broker: BrokerEnv,
    tmp_path: Path,
    artifacts_url: str,
    count: int = 2,
    extra_env: dict[str, str] | None = None,
) -> list[WorkerProcess]:
    env = {
        **broker.env(),
        **(extra_env or {}),
        "TASKLANE_ARTIFACTS_URL": artifacts_url,
        "TASKLANE_SCRAPER_ALLOW": "127.0.0.1/32",
        "TASKLANE_SCRAPER_MIN_DELAY": "0",
        "TASKLANE_SCRAPER_MAX_CONCURRENCY": "16",
        "TASKLANE_SCRAPER_CRAWL_BATCH": "3",
        "TASKLANE_SCRAPER_CRAWL_CONCURRENCY": "3",
    }
    workers = []
    for n in range(count):
        port = free_port()
        worker_env = {**env, "TASKLANE_METRICS_PORT": str(port)}
        worker = WorkerProcess("scraper", worker_env, tmp_path / f"scraper-{n}.log", concurrency=2)
        worker.metrics_port = port
        workers.append(worker)
    for worker in workers:
        worker.wait_ready()
    return workers


@pytest.fixture
def scrapers(
    broker: BrokerEnv, tmp_path: Path, artifacts_url: str
) -> Iterator[list[WorkerProcess]]:
    workers = start_scrapers(broker, tmp_path, artifacts_url)
    yield workers
    for worker in workers:
        worker.stop()


def wait_completed(publisher: Publisher, crawl_id: str, timeout: float = 90) -> list[CrawlStatus]:
    """Poll the crawl's status until it completes; every status seen, in order."""
    seen: list[CrawlStatus] = []

    def completed() -> list[CrawlStatus] | None:
        status = publisher.publish("scraper.crawl.status", {"crawl_id": crawl_id}).get(timeout=30)
        seen.append(status)
        return seen if status.state == "completed" else None

    return eventually(
        completed,
        timeout=timeout,
        interval=0.2,
        message=lambda: f"crawl {crawl_id} to complete: {seen[-1] if seen else None}",
    )


def crawled_paths(site: SiteServer) -> dict[str, int]:
    return {path: n for path, n in site.hits().items() if path != "/robots.txt"}


def test_crawl_stops_at_max_depth_and_fetches_each_page_once_across_two_workers(
    broker: BrokerEnv, site: SiteServer, scrapers: list[WorkerProcess], artifacts_url: str
) -> None:
    levels = bfs(graph(), max_depth=2)
    expected = {path for level in levels for path in level}
    beyond = bfs(graph(), max_depth=3)[3]
    with Publisher(broker.settings) as publisher:
        started = publisher.publish(
            "scraper.site.crawl",
            {"seeds": [f"{site.url}/"], "max_depth": 2, "max_pages": 1000},
        ).get(timeout=30)
        assert started.state == "running"
        assert started.queued == 1 and started.level == 0
        statuses = wait_completed(publisher, started.crawl_id)
    final = statuses[-1]
    hits = crawled_paths(site)
    assert set(hits) == expected
    assert all(count == 1 for count in hits.values()), hits
    assert final.fetched == len(expected) and final.failed == 0
    assert final.queued == len(expected) and final.level == 3
    assert final.out_of_bounds == len(beyond)  # the links found on the deepest level
    assert final.pending_batches == 0 and final.finished_at is not None
    # Which worker takes which batch is the broker's and the scheduler's choice (under load one
    # may take them all), so it is not asserted: each page once, above, holds either way, since
    # the crawl store claims atomically in Redis whichever process asks (test_crawl_state.py).
    assert any("scraper.crawl.fetch[" in worker.output() for worker in scrapers)
    store = open_store(artifacts_url)
    assert final.data_uri is not None
    lines = store.get(final.data_uri).decode().splitlines()
    records = {json.loads(line)["url"]: json.loads(line) for line in lines}
    assert set(records) == {f"{site.url}{path}" for path in expected}
    depths = {path: depth for depth, level in enumerate(levels) for path in level}
    assert all(records[f"{site.url}{p}"]["depth"] == d for p, d in depths.items())


def test_crawl_takes_exactly_max_pages_in_breadth_first_order(
    broker: BrokerEnv, site: SiteServer, scrapers: list[WorkerProcess]
) -> None:
    levels = bfs(graph(), max_depth=10)
    max_pages = 9
    urls = [sorted(f"{site.url}{path}" for path in level) for level in levels]
    expected = [url for level in urls for url in level][:max_pages]
    with Publisher(broker.settings) as publisher:
        started = publisher.publish(
            "scraper.site.crawl",
            {"seeds": [f"{site.url}/"], "max_depth": 10, "max_pages": max_pages},
        ).get(timeout=30)
        statuses = wait_completed(publisher, started.crawl_id)
    hits = crawled_paths(site)
    assert {f"{site.url}{path}" for path in hits} == set(expected)
    assert all(count == 1 for count in hits.values()), hits
    final = statuses[-1]
    assert final.fetched == max_pages and final.queued == max_pages
    assert final.out_of_bounds > 0
    # The status was queryable while the crawl ran, and moved forward.
    assert any(status.state == "running" for status in statuses)
    fetched = [status.fetched for status in statuses]
    assert fetched == sorted(fetched)


def test_crawl_id_makes_a_repeated_request_one_crawl(
    broker: BrokerEnv, site: SiteServer, scrapers: list[WorkerProcess]
) -> None:
    payload = {"seeds": [f"{site.url}/"], "max_depth": 1, "crawl_id": "catalogue-1"}
    with Publisher(broker.settings) as publisher:
        first = publisher.publish("scraper.site.crawl", payload).get(timeout=30)
        wait_completed(publisher, "catalogue-1")
        second = publisher.publish("scraper.site.crawl", payload).get(timeout=30)
    assert first.crawl_id == second.crawl_id == "catalogue-1"
    assert all(count == 1 for count in crawled_paths(site).values())
    assert len(crawled_paths(site)) == 6


def report_site() -> dict[str, Reply]:
    def html(title: str, links: list[str], price: str | None = None) -> Reply:
        anchors = "".join(f'<a href="{link}">x</a>' for link in links)
        field = f'<span class="price">{price}</span>' if price else ""
        body = f"<html><title>{title}</title><body>{field}{anchors}</body></html>"
        return Reply(body=body.encode())

    return {
        "/robots.txt": Reply(
            body=b"User-agent: *\nDisallow: /private/\n", headers={"Content-Type": "text/plain"}
        ),
        "/": html("Home", ["/a", "/b", "/c", "/missing", "/private/secret", "/data.txt", "/slow"]),
        "/a": html("A", ["/b", "/c"], "10.00"),
        "/b": html("B", ["/c"], "20.50"),
        "/c": html("C", ["/a"], "5.25"),
        "/slow": Reply(body=b"<html><title>Slow</title></html>", delay=0.4),
        "/data.txt": Reply(body=b"plain words", headers={"Content-Type": "text/plain"}),
    }


def scraper_counts(workers: list[WorkerProcess]) -> dict[tuple[str, str], float]:
    """The scraper's own counters, summed over the workers: (sample, label value) -> value."""
    counts: dict[tuple[str, str], float] = {}
    for worker in workers:
        port = worker.metrics_port
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name.startswith("tasklane_scraper_"):
                    key = (sample.name, "".join(sample.labels.values()))
                    counts[key] = counts.get(key, 0) + sample.value
    return counts


def test_report_figures_match_the_served_site(
    broker: BrokerEnv, scrapers: list[WorkerProcess], artifacts_url: str
) -> None:
    with SiteServer(report_site()) as site, Publisher(broker.settings) as publisher:
        crawl = publisher.publish(
            "scraper.site.crawl",
            {
                "seeds": [f"{site.url}/"],
                "max_depth": 3,
                "selectors": {"price": {"css": "span.price"}},
                "build_report": True,
            },
        ).get(timeout=30)
        wait_completed(publisher, crawl.crawl_id)
        report = publisher.publish(
            "scraper.report.build", {"crawl_id": crawl.crawl_id, "top": 3}
        ).get(timeout=60)
        assert "/private/secret" not in site.hits()
    url = site.url
    # The scraper's own metrics saw the same pages: by status, and the robots refusal.
    counts = scraper_counts(scrapers)
    assert counts[("tasklane_scraper_pages_total", "200")] == 6
    assert counts[("tasklane_scraper_pages_total", "404")] == 1
    assert counts[("tasklane_scraper_refusals_total", "robots-disallowed")] == 1
    assert counts[("tasklane_scraper_page_bytes_total", "")] > 0
    assert (report.pages, report.fetched, report.failed) == (8, 7, 1)
    assert report.by_status == {"200": 6, "404": 1}
    assert report.by_content_type == {"text/html": 6, "text/plain": 1}
    assert [(link.url, link.inlinks) for link in report.most_linked] == [
        (f"{url}/c", 3),
        (f"{url}/a", 2),
        (f"{url}/b", 2),
    ]
    assert report.response_ms["max"] >= 400 > report.response_ms["p50"]
    store = open_store(artifacts_url)
    analysis = json.loads(store.get(report.json_uri))
    assert analysis["by_error"] == {"robots-disallowed": 1}
    (price,) = analysis["fields"]
    assert price["name"] == "price" and price["present"] == 3
    assert price["numeric"]["sum"] == pytest.approx(35.75)
    rows = list(csv.DictReader(io.StringIO(store.get(report.csv_uri).decode())))
    served = [path for path in report_site() if path != "/robots.txt"]
    linked = [*served, "/missing", "/private/secret"]
    assert sorted(row["url"] for row in rows) == sorted(f"{url}{path}" for path in linked)
    by_url = {row["url"]: row for row in rows}
    assert by_url[f"{url}/missing"]["status"] == "404"
    assert by_url[f"{url}/private/secret"]["error_type"] == "robots-disallowed"
    assert by_url[f"{url}/b"]["price"] == "20.50" and by_url[f"{url}/c"]["inlinks"] == "3"
    html = store.get(report.html_uri).decode()
    assert "<svg" in html and crawl.crawl_id in html
    # build_report asked for the same report when the crawl completed.
    auto = store.uri(f"reports/{crawl.crawl_id}/report.html")
    assert store.exists(auto)


def test_page_failures_are_recorded_retried_or_refused_and_the_crawl_completes(
    broker: BrokerEnv, scrapers: list[WorkerProcess], artifacts_url: str
) -> None:
    ok = Reply(body=b"<html><title>ok</title></html>")
    pages: dict[str, Reply | list[Reply]] = {
        "/": Reply(
            body=b'<a href="/flaky">f</a><a href="/huge">h</a><a href="/away">a</a>'
            b'<a href="/image">i</a><a href="/gone">g</a>'
        ),
        "/flaky": [Reply(status=503, headers={"Retry-After": "1"}, body=b"busy"), ok],
        "/huge": Reply(body=b"x" * 50_000),
        "/image": Reply(body=b"\x89PNG", headers={"Content-Type": "image/png"}),
        "/gone": Reply(status=410, body=b"<html><title>gone</title></html>"),
        # 127.0.0.2 is not allow-listed: the guard refuses the hop before any connection.
        "/away": Reply(status=302, headers={"Location": "http://127.0.0.2:1/x"}),
    }
    with SiteServer(pages) as site, Publisher(broker.settings) as publisher:
        crawl = publisher.publish(
            "scraper.site.crawl",
            {"seeds": [f"{site.url}/"], "max_depth": 1, "max_bytes": 10_000},
        ).get(timeout=30)
        final = wait_completed(publisher, crawl.crawl_id)[-1]
        hits = site.hits()
    assert final.data_uri is not None
    records = {
        json.loads(line)["url"].removeprefix(site.url): json.loads(line)
        for line in open_store(artifacts_url).get(final.data_uri).decode().splitlines()
    }
    assert records["/flaky"]["status"] == 200 and records["/flaky"]["attempts"] == 2
    assert hits["/flaky"] == 2  # the 503, then the retry after Retry-After
    assert records["/huge"]["error_type"] == "too-large"
    assert records["/image"]["error_type"] == "unsupported-type"
    assert records["/gone"]["status"] == 410 and records["/gone"]["error"] is None
    assert (
        records["/away"]["error_type"] == "unsafe-url" and "127.0.0.2" in records["/away"]["error"]
    )
    assert (final.fetched, final.failed) == (3, 3)


@pytest.fixture
def s3_bucket() -> Iterator[tuple[str, dict[str, str]]]:
    """A bucket on a local S3-compatible server (moto) and the AWS_* variables that reach it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket="crawls")
    try:
        yield "crawls", env
    finally:
        client.close()
        server.stop()


def test_crawl_data_and_reports_go_to_s3(
    broker: BrokerEnv, tmp_path: Path, s3_bucket: tuple[str, dict[str, str]]
) -> None:
    bucket, aws = s3_bucket
    base = f"s3://{bucket}/tasklane"
    pages = {"/": Reply(body=b'<title>Home</title><a href="/a">a</a>'), "/a": Reply(body=b"<p>a")}
    (worker,) = start_scrapers(broker, tmp_path, base, count=1, extra_env=aws)
    try:
        with SiteServer(pages) as site, Publisher(broker.settings) as publisher:
            crawl = publisher.publish("scraper.site.crawl", {"seeds": [f"{site.url}/"]}).get(30)
            final = wait_completed(publisher, crawl.crawl_id)[-1]
            report = publisher.publish("scraper.report.build", {"crawl_id": crawl.crawl_id}).get(
                timeout=60
            )
    finally:
        worker.stop()
    assert final.data_uri == f"{base}/crawls/{crawl.crawl_id}/pages.jsonl"
    assert report.html_uri == f"{base}/reports/{crawl.crawl_id}/report.html"
    store = open_store(
        base,
        endpoint_url=aws["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    assert len(store.get(final.data_uri).splitlines()) == 2
    assert store.content_type(report.html_uri) == "text/html"
    assert report.pages == 2 and report.by_status == {"200": 2}
