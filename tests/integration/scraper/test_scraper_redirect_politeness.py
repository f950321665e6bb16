"""Redirect hops obey robots.txt and take their own turn at the per-host gate.

``scraper.page.PageFetcher`` (the path of ``scraper.page.fetch`` and of every crawl page) against
real local sites on two hosts and real Redis. What the sites' servers recorded is the truth:
which paths were asked for, and when each request reached the server.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from scraper.crawl import refusal_type
from scraper.fetch import FetchLimits, make_client
from scraper.page import PageFetcher
from scraper.politeness import DomainGate
from scraper.robots import RobotsCache, RobotsDisallowedError
from tasklane.contracts.scraper import FetchResult
from tasklane.errors import TransientError
from tasklane.net.guard import NetGuardPolicy, UnsafeURLError
from tasklane_dev.sinks import Reply, SiteServer
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

UA = "TasklaneBot/1.0 (+https://tasklane.example/bot)"
BOTH_HOSTS = NetGuardPolicy.from_strings(["127.0.0.1/32", f"{SECOND_HOST}/32"])
LIMITS = FetchLimits(connect_timeout=2.0, read_timeout=2.0, total_timeout=10.0, max_redirects=5)
DELAY = 0.4


@pytest.fixture
def make_fetcher(redis_url: str) -> Iterator[Callable[..., PageFetcher]]:
    """Build fetchers ("workers") as the scraper wires them, sharing one random key prefix.

    One request in flight per host (``max_concurrency=1``), so that requests to a host never
    overlap and the server sees them in the order the gate granted them.
    """
    prefix = f"t{uuid.uuid4().hex[:8]}."
    client = redis.Redis.from_url(redis_url)
    http = make_client(BOTH_HOSTS, LIMITS)

    def build(*, min_delay: float = 0.0, max_wait: float = 10.0) -> PageFetcher:
        gate = DomainGate(client, prefix=prefix, min_delay=min_delay, max_concurrency=1)
        cache = RobotsCache(client, http, user_agent=UA, prefix=prefix, gate=gate)
        return PageFetcher(
            http=http, robots=cache, gate=gate, user_agent=UA, limits=LIMITS, max_wait=max_wait
        )

    yield build
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)
    http.close()
    client.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., SiteServer]]:
    """Start sites on 127.0.0.1 (or on 127.0.0.2 with ``second_host``); stopped at teardown."""
    running: list[SiteServer] = []

    def start(pages: dict[str, Reply | list[Reply]], *, second_host: bool = False) -> SiteServer:
        site = (SecondHostSite if second_host else SiteServer)(pages).start()
        running.append(site)
        return site

    yield start
    for site in running:
        site.stop()


def get(fetcher: PageFetcher, url: str, *, timeout: float = 10.0) -> FetchResult:
    return fetcher.fetch(url, headers={}, selectors={}, max_bytes=100_000, timeout=timeout)


@pytest.mark.parametrize("start", ["/go-private", "/via-step"])
def test_a_redirect_into_a_disallowed_path_is_refused_as_the_path_itself_is(
    make_fetcher: Callable[..., PageFetcher], serve: Callable[..., SiteServer], start: str
) -> None:
    site = serve(
        {
            "/robots.txt": robots("User-agent: *\nDisallow: /private/\n"),
            "/go-private": redirect("/private/secret.html"),
            "/via-step": redirect("/step", 301),
            "/step": redirect("/private/secret.html", 307),
            "/private/secret.html": html("Secret", ("/leak",)),
        }
    )
    fetcher = make_fetcher()
    with pytest.raises(RobotsDisallowedError) as direct:
        get(fetcher, f"{site.url}/private/secret.html")
    with pytest.raises(RobotsDisallowedError) as hop:
        get(fetcher, f"{site.url}{start}")
    assert str(hop.value) == str(direct.value)
    assert refusal_type(hop.value) == refusal_type(direct.value) == "robots-disallowed"
    assert "/private/secret.html" not in paths(site)
    assert paths(site)[0] == "/robots.txt" and site.hits()["/robots.txt"] == 1


@pytest.mark.parametrize(
    ("rules", "min_delay"),
    [
        (f"User-agent: *\nAllow: /\nCrawl-delay: {DELAY}\n", 0.0),
        ("User-agent: *\nAllow: /\n", DELAY),
    ],
    ids=["crawl-delay", "min-delay"],
)
def test_robots_txt_and_every_hop_of_a_chain_take_their_own_turn(
    make_fetcher: Callable[..., PageFetcher],
    serve: Callable[..., SiteServer],
    rules: str,
    min_delay: float,
) -> None:
    site = serve(
        {
            "/robots.txt": robots(rules),
            "/a": redirect("/b", 301),
            "/b": redirect("/c"),
            "/c": redirect("/d", 307),
            "/d": html("D"),
        }
    )
    page = get(make_fetcher(min_delay=min_delay), f"{site.url}/a")
    assert page.status == 200 and page.final_url == f"{site.url}/d" and page.title == "D"
    assert paths(site) == ["/robots.txt", "/a", "/b", "/c", "/d"]
    assert not too_close(site, DELAY), gaps(site)


def test_the_redirect_hops_of_robots_txt_take_their_own_turns(
    make_fetcher: Callable[..., PageFetcher], serve: Callable[..., SiteServer]
) -> None:
    site = serve(
        {
            "/robots.txt": redirect("/robots-real.txt", 301),
            "/robots-real.txt": robots("User-agent: *\nDisallow: /private/\n"),
            "/page": html("Page"),
        }
    )
    fetcher = make_fetcher(min_delay=DELAY)
    assert get(fetcher, f"{site.url}/page").title == "Page"
    with pytest.raises(RobotsDisallowedError):  # the rules found at the end of the redirect
        get(fetcher, f"{site.url}/private/x")
    assert paths(site) == ["/robots.txt", "/robots-real.txt", "/page"]
    assert not too_close(site, DELAY), gaps(site)


def test_a_redirect_to_another_host_obeys_that_hosts_robots_txt_and_turn(
    make_fetcher: Callable[..., PageFetcher], serve: Callable[..., SiteServer]
) -> None:
    other = serve(
        {
            "/robots.txt": robots(f"User-agent: *\nDisallow: /private/\nCrawl-delay: {DELAY}\n"),
            "/landing": html("Landing"),
            "/direct": html("Direct"),
            "/private/x": html("Private there"),
        },
        second_host=True,
    )
    site = serve(
        {
            "/robots.txt": robots("User-agent: *\nAllow: /\n"),  # no delay on this host
            "/away": redirect(f"{other.url}/landing"),
            "/away-private": redirect(f"{other.url}/private/x"),
            "/private/x": html("Allowed here"),
        }
    )
    fetcher = make_fetcher()
    page = get(fetcher, f"{site.url}/away")
    assert page.final_url == f"{other.url}/landing" and page.title == "Landing"
    assert get(fetcher, f"{other.url}/direct").title == "Direct"
    with pytest.raises(RobotsDisallowedError) as direct:
        get(fetcher, f"{other.url}/private/x")
    with pytest.raises(RobotsDisallowedError) as hop:
        get(fetcher, f"{site.url}/away-private")
    assert str(hop.value) == str(direct.value)
    assert get(fetcher, f"{site.url}/private/x").title == "Allowed here"  # its own rules
    # The hop fetched the other host's robots.txt, and waited for its Crawl-delay after it.
    assert paths(other) == ["/robots.txt", "/landing", "/direct"]
    assert not too_close(other, DELAY), gaps(other)
    assert paths(site) == ["/robots.txt", "/away", "/away-private", "/private/x"]


def test_retry_after_on_a_hop_closes_the_host_that_sent_it(
    make_fetcher: Callable[..., PageFetcher], serve: Callable[..., SiteServer]
) -> None:
    other = serve(
        {
            "/robots.txt": robots("User-agent: *\nAllow: /\n"),
            "/busy": Reply(status=429, headers={"Retry-After": "30"}, body=b"slow down"),
        },
        second_host=True,
    )
    site = serve(
        {"/robots.txt": robots("User-agent: *\nAllow: /\n"), "/go": redirect(f"{other.url}/busy")}
    )
    fetcher = make_fetcher()
    with pytest.raises(TransientError) as caught:
        get(fetcher, f"{site.url}/go")
    assert caught.value.retry_after == 30
    with pytest.raises(TransientError, match="busy"):
        fetcher.gate.acquire(SECOND_HOST, max_wait=0)
    fetcher.gate.acquire("127.0.0.1", max_wait=0).release()  # the first host stays open


def test_waiting_for_the_turns_of_hops_counts_against_the_fetch_timeout(
    make_fetcher: Callable[..., PageFetcher], serve: Callable[..., SiteServer]
) -> None:
    site = serve(
        {
            "/robots.txt": robots("User-agent: *\nAllow: /\nCrawl-delay: 1\n"),
            "/a": redirect("/b"),
            "/b": redirect("/c"),
            "/c": html("C"),
        }
    )
    with pytest.raises(TransientError, match="busy") as caught:
        get(make_fetcher(), f"{site.url}/a", timeout=1.5)  # /b and /c need 2 s of waiting
    assert (caught.value.retry_after or 0) > 0
    assert "/c" not in paths(site)
    assert not too_close(site, 1.0), gaps(site)


@pytest.mark.parametrize("location", ["ftp://127.0.0.1/x", "file:///etc/passwd"])
def test_a_redirect_to_another_scheme_is_still_refused_by_the_guard(
    make_fetcher: Callable[..., PageFetcher], serve: Callable[..., SiteServer], location: str
) -> None:
    site = serve({"/robots.txt": robots("User-agent: *\nAllow: /\n"), "/go": redirect(location)})
    with pytest.raises(UnsafeURLError, match="scheme") as caught:
        get(make_fetcher(), f"{site.url}/go")
    assert refusal_type(caught.value) == "unsafe-url"
    assert paths(site) == ["/robots.txt", "/go"]
