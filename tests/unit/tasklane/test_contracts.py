from __future__ import annotations

import pytest

from tasklane.contracts import (
    PING_CONTRACTS,
    REGISTRY,
    SEND_EMAIL,
    ContractRegistry,
    Payload,
    Result,
    RetryPolicy,
    TaskContract,
)
from tasklane.contracts.ping import PingPayload, PingResult, is_ping, pong
from tasklane.contracts.validation import validate_payload
from tasklane.errors import TransientError, UnknownContractError


class NoopPayload(Payload):
    n: int = 0


class NoopResult(Result):
    n: int


def test_registry_knows_every_service_contract() -> None:
    assert [c.name for c in REGISTRY.for_service("notifier")] == [
        "notifier.email.ping",
        "notifier.email.send",
        "notifier.im.ping",
        "notifier.im.send",
    ]
    assert REGISTRY.services() == ("media", "notifier", "scraper")
    media = {c.name: c.queue for c in REGISTRY.for_service("media")}
    assert media == {
        "media.image.ping": "media.image",
        "media.video.ping": "media.video",
        "media.image.transform": "media.image",
        "media.image.thumbnail": "media.image",
        "media.video.probe": "media.video",
        "media.video.thumbnail": "media.video",
        "media.video.transcode": "media.video",
    }
    scraper = {c.name: c.queue for c in REGISTRY.for_service("scraper")}
    assert scraper == {
        "scraper.crawl.ping": "scraper.crawl",
        "scraper.fetch.ping": "scraper.fetch",
        "scraper.reports.ping": "scraper.reports",
        "scraper.page.fetch": "scraper.fetch",
        "scraper.crawl.fetch": "scraper.fetch",
        "scraper.site.crawl": "scraper.crawl",
        "scraper.crawl.status": "scraper.crawl",
        "scraper.crawl.advance": "scraper.crawl",
        "scraper.report.build": "scraper.reports",
    }


def test_unknown_contract_names_the_task() -> None:
    with pytest.raises(UnknownContractError, match="notifier.fax.send"):
        REGISTRY["notifier.fax.send"]


def test_duplicate_contract_is_refused() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        ContractRegistry((SEND_EMAIL, SEND_EMAIL))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "noop"}, "must read <service>.<area>.<action>"),
        ({"soft_time_limit": 10, "time_limit": 10}, "soft_time_limit must be below"),
        ({"priority": 12}, "priority must be within"),
        ({"idempotency_key": ("missing",)}, "unknown fields"),
    ],
)
def test_inconsistent_contracts_are_refused(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "name": "bench.noop.run",
        "queue": "bench.noop",
        "payload": NoopPayload,
        "result": NoopResult,
    }
    with pytest.raises(ValueError, match=message):
        TaskContract(**{**base, **kwargs})  # type: ignore[arg-type]


def test_idempotency_value_joins_the_key_fields() -> None:
    assert SEND_EMAIL.idempotency_value({"idempotency_key": "order-7"}) == "order-7"
    assert SEND_EMAIL.idempotency_value({"idempotency_key": None}) is None


def test_retry_policy_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    policy = RetryPolicy(backoff_base=1.0, backoff_max=30.0)
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (10, 30.0)]:
        delays = {policy.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jitter spreads retries
    assert policy.delay(0, retry_after=12.0) >= 12.0
    assert policy.delay(0, retry_after=999.0) == 30.0  # capped by backoff_max
    assert policy.retries(TransientError("x"))
    assert not policy.retries(ValueError("x"))


def test_every_work_queue_has_one_ping_contract_on_that_queue() -> None:
    work = {c.queue for c in REGISTRY if not is_ping(c)}
    pings = [c for c in REGISTRY if is_ping(c)]
    assert sorted(c.queue for c in pings) == sorted(work)
    assert [c.name for c in pings] == [f"{c.queue}.ping" for c in pings]
    assert list(PING_CONTRACTS) == pings
    for contract in pings:
        # The smoke test must not outlast real work nor hide behind retries.
        assert contract.retry.max_retries == 0
        assert contract.priority == 9
        assert contract.time_limit <= min(c.time_limit for c in REGISTRY if not is_ping(c))
        assert pong(contract) == PingResult(queue=contract.queue)
        assert validate_payload(contract, {}) == PingPayload()
