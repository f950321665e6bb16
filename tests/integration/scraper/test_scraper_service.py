"""A real scraper worker fetches from a local site: politely, through the SSRF guard."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tasklane.errors import TaskFailedError
from tasklane.publish import Publisher
from tests.support.harness import BrokerEnv, WorkerProcess, wait_for_dead_letters

USER_AGENT = "TasklaneTestBot/1.0"
PAGE = b"""<html><head><title>Catalogue</title></head><body>
<h1 class="name">Blue kettle</h1><span class="price">19.90</span>
<a href="/item/2">next</a> <a href="/private/x">hidden</a>
</body></html>"""


class Site:
    """A small site on 127.0.0.1: robots.txt, a page, a private area, a redirect and a 429."""

    def __init__(self) -> None:
        self.hits: list[tuple[str, str, float]] = []
        self.lock = threading.Lock()
        self.throttled_once = False
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                with site.lock:
                    site.hits.append((self.path, self.headers["User-Agent"], time.monotonic()))
                status, headers, body = site.answer(self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, path: str) -> tuple[int, dict[str, str], bytes]:
        html = {"Content-Type": "text/html; charset=utf-8"}
        if path == "/robots.txt":
            return 200, {"Content-Type": "text/plain"}, b"User-agent: *\nDisallow: /private/\n"
        if path == "/item/1":
            return 200, html, PAGE
        if path == "/moved":
            port = self.server.server_address[1]
            return 302, {"Location": f"http://127.0.0.2:{port}/item/1"}, b""
        if path == "/busy":
            with self.lock:
                first, self.throttled_once = not self.throttled_once, True
            if first:
                return 429, {"Retry-After": "3", "Content-Type": "text/plain"}, b"slow down"
            return 200, html, PAGE
        return 404, html, b"<html><title>Not found</title></html>"

    def paths(self) -> list[str]:
        with self.lock:
            return [path for path, _, _ in self.hits]


@pytest.fixture
def site() -> Iterator[Site]:
    serving = Site()
    serving.thread.start()
    yield serving
    serving.server.shutdown()
    serving.server.server_close()


@pytest.fixture
def scraper(broker: BrokerEnv, tmp_path: Path) -> Iterator[WorkerProcess]:
    env = {
        **broker.env(),
        "TASKLANE_SCRAPER_ALLOW": "127.0.0.1/32",  # the local site; 127.0.0.2 stays refused
        "TASKLANE_SCRAPER_USER_AGENT": USER_AGENT,
        "TASKLANE_SCRAPER_MIN_DELAY": "0.2",
    }
    worker = WorkerProcess("scraper", env, tmp_path / "scraper.log", concurrency=2)
    worker.wait_ready()
    yield worker
    worker.stop()


def test_fetch_extracts_named_fields_and_links(
    broker: BrokerEnv, site: Site, scraper: WorkerProcess
) -> None:
    with Publisher(broker.settings) as publisher:
        result = publisher.publish(
            "scraper.page.fetch",
            {
                "url": f"{site.url}/item/1",
                "selectors": {
                    "name": {"css": "h1.name"},
                    "price": {"xpath": "//span[@class='price']/text()"},
                    "links": {"css": "a", "attribute": "href", "many": True},
                },
            },
        ).get(timeout=30)
    assert result.status == 200
    assert result.title == "Catalogue"
    assert result.fields["name"] == "Blue kettle"
    assert result.fields["price"] == "19.90"
    assert result.fields["links"] == ["/item/2", "/private/x"]
    assert result.links == [f"{site.url}/item/2", f"{site.url}/private/x"]
    assert result.content_type == "text/html"
    assert result.bytes == len(PAGE)
    assert site.paths() == ["/robots.txt", "/item/1"]
    assert {agent for _, agent, _ in site.hits} == {USER_AGENT}


def test_refusals_are_dead_lettered_and_never_retried(
    broker: BrokerEnv, site: Site, scraper: WorkerProcess
) -> None:
    with Publisher(broker.settings) as publisher:
        private = publisher.publish("scraper.page.fetch", {"url": f"{site.url}/private/x"})
        moved = publisher.publish("scraper.page.fetch", {"url": f"{site.url}/moved"})
        with pytest.raises(TaskFailedError, match="robots.txt|disallow"):
            private.get(timeout=30)
        with pytest.raises(TaskFailedError, match="127.0.0.2"):
            moved.get(timeout=30)
    letters = {
        letter.task_id: letter for letter in wait_for_dead_letters(broker, "scraper.fetch", 2)
    }
    assert letters[private.id].error_type == "RobotsDisallowedError"
    assert letters[moved.id].error_type == "UnsafeURLError"
    assert all(letter.attempts == 1 for letter in letters.values())
    assert "/private/x" not in site.paths()  # robots.txt refused it before any request
    assert site.paths().count("/moved") == 1  # refused at the redirect hop, not retried
    assert scraper.process.poll() is None


def test_429_retry_after_is_honoured(broker: BrokerEnv, site: Site, scraper: WorkerProcess) -> None:
    with Publisher(broker.settings) as publisher:
        result = publisher.publish("scraper.page.fetch", {"url": f"{site.url}/busy"}).get(
            timeout=40
        )
    assert result.status == 200
    busy = [at for path, _, at in site.hits if path == "/busy"]
    assert len(busy) == 2
    assert busy[1] - busy[0] >= 3.0
