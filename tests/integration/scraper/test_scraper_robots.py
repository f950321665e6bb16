"""robots.txt rules against a real local HTTP server, shared through real Redis."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import redis

from scraper.robots import UNREACHABLE_TTL, RobotsCache, RobotsDisallowedError
from tasklane.errors import PermanentError
from tasklane.net.guard import NetGuardPolicy, guarded_client
from tests.support import eventually

LOCAL_ONLY = NetGuardPolicy.from_strings(["127.0.0.1/32"])
UA = "TasklaneBot/1.0 (+https://tasklane.example/bot)"
ROBOTS = """\
User-agent: *
Disallow: /

User-agent: tasklanebot
Disallow: /private
Crawl-delay: 2.5
"""


@dataclass
class Site:
    """What the server answers for /robots.txt, and what it was asked."""

    port: int = 0
    status: int = 200
    body: bytes = ROBOTS.encode()
    delay: float = 0.0
    hits: list[str] = field(default_factory=list)  # User-Agent of each robots.txt request
    stop: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            assert self.path == "/robots.txt", self.path
            site.hits.append(self.headers.get("User-Agent", ""))
            if site.delay and site.stop.wait(site.delay):
                return  # a hung server, released at teardown: the client gave up long ago
            self.send_response(site.status)
            self.send_header("Content-Length", str(len(site.body)))
            self.end_headers()
            self.wfile.write(site.body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def serve() -> Iterator[Callable[[], Site]]:
    """Start local robots.txt servers on free ports; all are stopped at teardown."""
    running: list[tuple[Site, ThreadingHTTPServer, threading.Thread]] = []

    def start() -> Site:
        site = Site()
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(site))
        site.port = httpd.server_address[1]
        thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        running.append((site, httpd, thread))
        return site

    yield start
    for site, httpd, thread in running:
        site.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def site(serve: Callable[[], Site]) -> Site:
    return serve()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with guarded_client(LOCAL_ONLY, timeout=2) as http:
        yield http


@pytest.fixture
def make(client: redis.Redis, http: httpx.Client) -> Iterator[Callable[..., RobotsCache]]:
    """Build caches ("workers") sharing one random key prefix, deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:8]}."

    def build(
        user_agent: str = UA,
        *,
        http_client: httpx.Client | None = None,
        ttl: int = 3600,
        max_bytes: int = 512 * 1024,
    ) -> RobotsCache:
        return RobotsCache(
            client,
            http_client or http,
            user_agent=user_agent,
            prefix=prefix,
            ttl=ttl,
            max_bytes=max_bytes,
        )

    yield build
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)


def test_our_group_rules_our_user_agent(make: Callable[..., RobotsCache], site: Site) -> None:
    robots = make()
    assert robots.allowed(site.url("/public/page"))
    assert not robots.allowed(site.url("/private/page?id=1"))
    robots.check(site.url("/public/page"))
    with pytest.raises(RobotsDisallowedError) as caught:
        robots.check(site.url("/private/page?token=secret"))
    assert isinstance(caught.value, PermanentError)
    message = str(caught.value)
    assert site.url("/private/page") in message and UA in message
    assert "secret" not in message
    assert site.hits == [UA]  # fetched once, identifying as us


def test_another_user_agent_gets_the_star_group(
    make: Callable[..., RobotsCache], site: Site
) -> None:
    other = make("OtherBot/2.0")
    assert not other.allowed(site.url("/public/page"))
    assert other.crawl_delay(site.url("/")) is None
    assert site.hits == ["OtherBot/2.0"]


def test_only_the_product_token_selects_a_group(
    make: Callable[..., RobotsCache], site: Site
) -> None:
    site.body = b"User-agent: *\nDisallow: /\n\nUser-agent: example\nAllow: /\n"
    # "example" appears in the header's comment, yet the group is not ours.
    robots = make("NewBot/1.0 (+https://example.com)")
    assert not robots.allowed(site.url("/page"))


def test_crawl_delay_is_read_for_our_group(make: Callable[..., RobotsCache], site: Site) -> None:
    assert make().crawl_delay(site.url("/anything")) == 2.5


def test_robots_is_fetched_once_across_workers(
    make: Callable[..., RobotsCache], serve: Callable[[], Site]
) -> None:
    first, second = serve(), serve()
    second.body = b"User-agent: *\nDisallow: /only-here\n"
    worker_a, worker_b = make(), make()
    for n in range(20):
        worker = worker_a if n % 2 else worker_b
        assert worker.allowed(first.url(f"/public/{n}"))
        assert not worker.allowed(first.url(f"/private/{n}"))
        assert not worker.allowed(second.url(f"/only-here/{n}"))
        assert worker.allowed(second.url(f"/private/{n}"))  # each origin has its own rules
    assert (len(first.hits), len(second.hits)) == (1, 1)


def test_concurrent_misses_fetch_once(make: Callable[..., RobotsCache], site: Site) -> None:
    site.delay = 0.3  # slow enough that every worker misses the cache at the same time
    workers = [make(), make()]
    results: list[bool] = []

    def ask(n: int) -> None:
        results.append(workers[n % 2].allowed(site.url(f"/private/{n}")))

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == [False] * 8
    assert len(site.hits) == 1


def test_404_allows_everything(make: Callable[..., RobotsCache], site: Site) -> None:
    site.status, site.body = 404, b"not found"
    robots = make()
    assert robots.allowed(site.url("/private/page"))
    assert robots.crawl_delay(site.url("/")) is None
    robots.check(site.url("/"))


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_disallow_everything_briefly(
    make: Callable[..., RobotsCache], client: redis.Redis, site: Site, status: int
) -> None:
    site.status, site.body = status, b"oops"
    robots = make()
    assert not robots.allowed(site.url("/public/page"))
    with pytest.raises(RobotsDisallowedError):
        robots.check(site.url("/"))
    assert 0 < client.pttl(robots.key(site.url("/"))) <= UNREACHABLE_TTL * 1000
    assert len(site.hits) == 1


def test_a_timeout_disallows_everything(make: Callable[..., RobotsCache], site: Site) -> None:
    site.delay = 5
    with guarded_client(LOCAL_ONLY, timeout=0.3) as impatient:
        robots = make(http_client=impatient)
        started = time.monotonic()
        assert not robots.allowed(site.url("/public/page"))
    assert time.monotonic() - started < 2


def test_an_unreachable_host_disallows_everything(make: Callable[..., RobotsCache]) -> None:
    assert not make().allowed("http://127.0.0.1:1/page")  # nothing listens on port 1


def test_only_max_bytes_are_parsed(
    make: Callable[..., RobotsCache], serve: Callable[[], Site]
) -> None:
    site, copy = serve(), serve()
    head = b"User-agent: *\nDisallow: /a\n"
    padding = b"# " + b"x" * 60 + b"\n"
    site.body = head + padding + b"Disallow: /bcdefgh\n" + b"Disallow: /c\n"
    cut = len(head + padding) + len(b"Disallow: /bc")  # the limit falls inside the /b rule
    robots = make(max_bytes=cut)
    assert not robots.allowed(site.url("/a"))
    assert robots.allowed(site.url("/bcdefgh"))  # the cut line is dropped, not read as /bc
    assert robots.allowed(site.url("/c"))
    copy.body = site.body
    assert not make(max_bytes=len(copy.body)).allowed(copy.url("/c"))


def test_expiry_fetches_again_once(make: Callable[..., RobotsCache], site: Site) -> None:
    worker_a, worker_b = make(ttl=1), make(ttl=1)
    assert not worker_a.allowed(site.url("/private"))
    assert not worker_b.allowed(site.url("/private"))
    site.body = b"User-agent: *\nAllow: /\n"
    assert not worker_a.allowed(site.url("/private"))  # still cached, in process and Redis
    eventually(
        lambda: worker_a.allowed(site.url("/private")),
        timeout=3,
        message="the cached robots.txt to expire after its 1 s",
    )
    assert worker_b.allowed(site.url("/private"))
    assert len(site.hits) == 2
