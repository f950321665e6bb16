"""Crawl throughput of one scraper worker process against a local site.

Starts a site of ``--site-pages`` linked pages in its own process and one scraper worker with a
single pool process, then, per round:

* **crawl**: ``scraper.site.crawl`` of ``--pages`` pages (batches fetched concurrently by the
  worker's thread pool), timed from the crawl's start to its completion as the crawl records them;
* **per-page tasks** (baseline): the same number of pages as one ``scraper.page.fetch`` task each,
  published in bulk and timed from the publish to the last result, on the same worker.

Prints pages per second of each (median of the rounds) and their ratio; the target is >= 300
pages/s per worker process for the crawl. Run with ``make bench-crawl`` or
``.venv/bin/python bench/crawl.py --help``.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import redis

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from run import broker  # noqa: E402  (the same broker choice as the other benchmarks)

NAMESPACE = "perfcrawl."
TARGET_PAGES_PER_SECOND = 300.0
LINKS_PER_PAGE = 8


def site_pages(count: int) -> dict[str, bytes]:
    """``count`` pages, each linking to ``LINKS_PER_PAGE`` others, with a title and a price."""
    pages = {}
    for i in range(count):
        links = "".join(
            f'<li><a href="/p/{(i * LINKS_PER_PAGE + k + 1) % count}">item {k}</a></li>'
            for k in range(LINKS_PER_PAGE)
        )
        pages[f"/p/{i}"] = (
            f"<html><head><title>Item {i}</title></head><body><h1>Item {i}</h1>"
            f'<p class="price">{i % 97}.99</p><p>{"Lorem ipsum dolor sit amet. " * 20}</p>'
            f"<ul>{links}</ul></body></html>"
        ).encode()
    return pages


def serve(port_file: Path, count: int) -> None:
    """Serve the site until killed; write its port to ``port_file`` once listening."""
    from tasklane_dev.sinks import Reply, SiteServer

    pages = {path: Reply(body=body) for path, body in site_pages(count).items()}
    pages["/robots.txt"] = Reply(body=b"User-agent: *\nAllow: /\n")
    with SiteServer(pages) as site:
        port_file.write_text(site.url)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})


@contextmanager
def process(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        child = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield child
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()


def wait_until(check: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not happen in {timeout}s")


def crawl_round(publisher: object, site_url: str, pages: int) -> float:
    """Pages per second of one crawl, from its recorded start to its completion."""
    from tasklane.publish import Publisher

    assert isinstance(publisher, Publisher)
    crawl_id = f"bench-{uuid.uuid4().hex[:8]}"
    publisher.publish(
        "scraper.site.crawl",
        {"seeds": [f"{site_url}/p/0"], "max_pages": pages, "max_depth": 20, "crawl_id": crawl_id},
    ).get(timeout=60)
    while True:
        status = publisher.publish("scraper.crawl.status", {"crawl_id": crawl_id}).get(60)
        if status.state == "completed":
            break
        time.sleep(0.1)
    if status.fetched != pages or status.failed:
        raise RuntimeError(f"crawl fetched {status.fetched} of {pages}, {status.failed} failed")
    assert status.finished_at is not None
    seconds = (
        datetime.fromisoformat(status.finished_at) - datetime.fromisoformat(status.started_at)
    ).total_seconds()
    return pages / seconds


def per_page_round(publisher: object, site_url: str, pages: int) -> float:
    """Pages per second of one ``scraper.page.fetch`` task per page, publish to last result."""
    from tasklane.publish import Publisher

    assert isinstance(publisher, Publisher)
    started = time.perf_counter()
    handles = publisher.publish_many(
        "scraper.page.fetch", [{"url": f"{site_url}/p/{i}"} for i in range(pages)]
    )
    for handle in handles:
        handle.get(timeout=300)
    return pages / (time.perf_counter() - started)


def cleanup(client: redis.Redis) -> None:
    for pattern in (f"{NAMESPACE}*", f"_kombu.binding*{NAMESPACE}*", "celery-task-meta-*"):
        keys = list(client.scan_iter(pattern, count=5000))
        for start in range(0, len(keys), 5000):
            client.unlink(*keys[start : start + 5000])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", help="Redis broker URL (default: as bench/run.py)")
    parser.add_argument("--pages", type=int, default=3000, help="pages per round (3000)")
    parser.add_argument("--site-pages", type=int, default=5000, help="pages on the site (5000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each (3)")
    parser.add_argument("--batch", type=int, default=32, help="URLs per crawl batch (32)")
    parser.add_argument("--threads", type=int, default=32, help="fetch threads per batch (32)")
    parser.add_argument("--quick", action="store_true", help="1 round of 1000 pages")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve(args.serve, args.site_pages)
        return 0
    if args.quick:
        args.pages, args.rounds = 1000, 1
    with broker(args.broker) as broker_url, tempfile.TemporaryDirectory() as tmp:
        return run(args, broker_url, Path(tmp))


def run(args: argparse.Namespace, broker_url: str, tmp: Path) -> int:
    from tasklane.publish import Publisher
    from tasklane.settings import Settings

    client = redis.Redis.from_url(broker_url)
    cleanup(client)
    env = {
        **os.environ,
        "TASKLANE_BROKER_URL": broker_url,
        "TASKLANE_RESULT_BACKEND": broker_url,
        "TASKLANE_NAMESPACE": NAMESPACE,
        "TASKLANE_ARTIFACTS_URL": (tmp / "artifacts").as_uri(),
        "TASKLANE_SCRAPER_ALLOW": "127.0.0.1/32",
        "TASKLANE_SCRAPER_MIN_DELAY": "0",
        "TASKLANE_SCRAPER_MAX_CONCURRENCY": "1000",
        "TASKLANE_SCRAPER_CRAWL_BATCH": str(args.batch),
        "TASKLANE_SCRAPER_CRAWL_CONCURRENCY": str(args.threads),
    }
    port_file = tmp / "site"
    serve_cmd = [sys.executable, __file__, "--serve", str(port_file)]
    serve_cmd += ["--site-pages", str(args.site_pages)]
    tasklane = str(Path(sys.executable).with_name("tasklane"))
    worker_cmd = [tasklane, "worker", "scraper", "--concurrency", "1", "--loglevel", "INFO"]
    worker_cmd += ["--", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    worker_log = tmp / "worker.log"
    settings = Settings(broker_url=broker_url, result_backend=broker_url, namespace=NAMESPACE)
    try:
        with (
            process(serve_cmd, env, tmp / "site.log"),
            process(worker_cmd, env, worker_log),
            Publisher(settings) as publisher,
        ):
            wait_until(port_file.exists, "the site starting")
            wait_until(lambda: " ready." in worker_log.read_text(errors="replace"), "worker ready")
            site_url = port_file.read_text()
            print(
                f"{args.rounds} round(s) of {args.pages} pages, one worker process, "
                f"batches of {args.batch} on {args.threads} threads, {os.cpu_count()} CPUs"
            )
            crawl_round(publisher, site_url, min(args.pages, 200))  # warm-up: robots, pools
            crawl, single = [], []
            for n in range(args.rounds):
                crawl.append(crawl_round(publisher, site_url, args.pages))
                single.append(per_page_round(publisher, site_url, args.pages))
                print(
                    f"  round {n + 1}: crawl {crawl[-1]:.0f} pages/s, "
                    f"per-page tasks {single[-1]:.0f} pages/s"
                )
    finally:
        cleanup(client)
    crawl_rate, single_rate = statistics.median(crawl), statistics.median(single)
    met = "met" if crawl_rate >= TARGET_PAGES_PER_SECOND else "MISSED"
    target = f"target >= {TARGET_PAGES_PER_SECOND:.0f}: {met}"
    print(f"crawl            {crawl_rate:8.0f} pages/s   ({target})")
    print(f"per-page tasks   {single_rate:8.0f} pages/s   (baseline)")
    print(f"ratio            {crawl_rate / single_rate:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
