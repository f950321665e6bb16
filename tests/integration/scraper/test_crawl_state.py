"""Crawl accounting in a real Redis: claims, bounds, redeliveries and dead-lettered batches."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from scraper.crawlstate import CrawlNotFoundError, CrawlSpec, CrawlStore, retry_batch_id
from scraper.records import PageRecord, now_iso
from tasklane.contracts.scraper import CrawlURL
from tasklane.errors import PermanentError

SPEC = CrawlSpec(allowed_domains=["a.test"], selectors={}, max_bytes=1000, timeout=5, batch_size=2)


@pytest.fixture
def store(redis_url: str) -> Iterator[CrawlStore]:
    client = redis.Redis.from_url(redis_url)
    namespace = f"t{uuid.uuid4().hex[:8]}."
    yield CrawlStore(client, namespace=namespace, ttl=60)
    keys = list(client.scan_iter(f"{namespace}*"))
    if keys:
        client.delete(*keys)


def page(url: str, depth: int = 0) -> PageRecord:
    return PageRecord(url=url, depth=depth, status=200, fetched_at=now_iso())


def start(store: CrawlStore, seeds: list[str], max_pages: int = 100, max_depth: int = 3) -> str:
    crawl_id = uuid.uuid4().hex
    assert store.create(
        crawl_id, SPEC, seeds=seeds, max_pages=max_pages, max_depth=max_depth, started_at=now_iso()
    )
    return crawl_id


def test_a_level_is_claimed_once_and_replayed_identically(store: CrawlStore) -> None:
    crawl_id = start(store, ["http://a.test/2", "http://a.test/1", "http://a.test/3"])
    first = store.advance(crawl_id, 0, 2)
    assert first.urls == ["http://a.test/1", "http://a.test/2", "http://a.test/3"]
    assert [batch_id for batch_id, _ in first.batches(2)] == ["0.0", "0.1"]
    assert store.advance(crawl_id, 0, 2).urls == first.urls  # a redelivered advance
    with pytest.raises(PermanentError, match="batches pending"):
        store.advance(crawl_id, 1, 2)
    status = store.status(crawl_id)
    assert (status.level, status.queued, status.pending_batches) == (0, 3, 2)


def test_a_level_is_done_when_its_last_batch_finishes_once(store: CrawlStore) -> None:
    crawl_id = start(store, ["http://a.test/1", "http://a.test/2", "http://a.test/3"])
    store.advance(crawl_id, 0, 2)
    store.record(crawl_id, 0, [page("http://a.test/1")], links=["http://a.test/9"])
    assert not store.finish_batch(crawl_id, "0.0").level_done(0)
    assert not store.finish_batch(crawl_id, "0.0").level_done(0)  # counted once
    assert store.status(crawl_id).pending_batches == 1
    assert not store.finish_batch(crawl_id, "9.9").level_done(0)  # never scheduled
    assert store.finish_batch(crawl_id, "0.1").level_done(0)
    assert store.advance(crawl_id, 1, 2).urls == ["http://a.test/9"]


def test_retry_batches_hold_the_level_open(store: CrawlStore) -> None:
    crawl_id = start(store, ["http://a.test/1"])
    store.advance(crawl_id, 0, 2)
    retry = retry_batch_id("0.0", 0)
    assert store.record(crawl_id, 0, [], retry_batches=[retry]) == (0, 0, 1)
    assert store.record(crawl_id, 0, [], retry_batches=[retry]) == (0, 0, 0)  # redelivery
    assert not store.finish_batch(crawl_id, "0.0").level_done(0)
    assert store.finish_batch(crawl_id, retry).level_done(0)


def test_pages_are_counted_once_and_the_first_record_wins(store: CrawlStore) -> None:
    crawl_id = start(store, ["http://a.test/1"])
    store.advance(crawl_id, 0, 2)
    assert store.record(crawl_id, 0, [page("http://a.test/1")])[:2] == (1, 0)
    assert store.record(crawl_id, 0, [page("http://a.test/1")])[:2] == (0, 0)
    assert store.recorded(crawl_id, ["http://a.test/1", "http://a.test/2"]) == {"http://a.test/1"}
    assert store.status(crawl_id).fetched == 1


def test_max_pages_and_max_depth_bound_the_claims(store: CrawlStore) -> None:
    crawl_id = start(store, ["http://a.test/0"], max_pages=3, max_depth=1)
    store.advance(crawl_id, 0, 10)
    links = [f"http://a.test/{n}" for n in range(1, 6)] + ["http://a.test/0"]
    store.record(crawl_id, 0, [page("http://a.test/0")], links=links)
    store.finish_batch(crawl_id, "0.0")
    level = store.advance(crawl_id, 1, 10)
    assert level.urls == ["http://a.test/1", "http://a.test/2"]  # budget 3, seed included
    store.record(crawl_id, 1, [page(u, 1) for u in level.urls], links=["http://a.test/7"])
    assert store.finish_batch(crawl_id, "1.0").level_done(1)
    last = store.advance(crawl_id, 2, 10)
    assert (last.urls, last.state) == ([], "finishing")  # depth 2 is beyond max_depth
    status = store.status(crawl_id)
    assert status.queued == 3 and status.out_of_bounds == 3 + 1


def test_redirect_targets_are_not_claimed_again(store: CrawlStore) -> None:
    crawl_id = start(store, ["http://a.test/old"])
    store.advance(crawl_id, 0, 2)
    store.record(
        crawl_id,
        0,
        [page("http://a.test/old")],
        links=["http://a.test/new", "http://a.test/other"],
        redirected=["http://a.test/new"],
    )
    store.finish_batch(crawl_id, "0.0")
    assert store.advance(crawl_id, 1, 2).urls == ["http://a.test/other"]


def test_a_dead_lettered_batch_is_settled_and_its_level_completes(store: CrawlStore) -> None:
    urls = ["http://a.test/1", "http://a.test/2"]
    crawl_id = start(store, urls)
    store.advance(crawl_id, 0, 2)
    # The batch recorded one page and scheduled a retry for the other, then died.
    store.record(crawl_id, 0, [page(urls[0])], retry_batches=[retry_batch_id("0.0", 1)])
    items = [CrawlURL(url=url) for url in urls]
    end = store.settle_dead_batch(crawl_id, "0.0", 0, items, "dead-lettered: time limit")
    assert end.level_done(0)
    pages = {record.url: record for record in store.pages(crawl_id)}
    assert pages[urls[0]].ok
    assert pages[urls[1]].error_type == "dead-lettered"
    assert pages[urls[1]].error == "dead-lettered: time limit"
    status = store.status(crawl_id)
    assert (status.fetched, status.failed, status.pending_batches) == (1, 1, 0)


def test_unknown_and_completed_crawls_answer_clearly(store: CrawlStore) -> None:
    with pytest.raises(CrawlNotFoundError, match="no crawl 'nope'"):
        store.status("nope")
    with pytest.raises(CrawlNotFoundError):
        store.advance("nope", 0, 2)
    crawl_id = start(store, ["http://a.test/1"])
    assert not store.create(
        crawl_id, SPEC, seeds=["http://a.test/x"], max_pages=1, max_depth=0, started_at=now_iso()
    )
    store.advance(crawl_id, 0, 2)
    store.finish_batch(crawl_id, "0.0")
    store.advance(crawl_id, 1, 2)
    store.complete(crawl_id, data_uri="file:///x/pages.jsonl", finished_at=now_iso())
    status = store.status(crawl_id)
    assert status.state == "completed" and status.data_uri == "file:///x/pages.jsonl"
    with pytest.raises(PermanentError, match="not running"):
        store.advance(crawl_id, 2, 2)
