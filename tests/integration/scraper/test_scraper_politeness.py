"""Per-host delay and concurrency across several gates ("workers") sharing real Redis."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from scraper.politeness import DomainGate, Lease
from tasklane.errors import TransientError
from tests.support import eventually

HOST = "shop.example"


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
def make(redis_url: str, prefix: str) -> Iterator[Callable[..., DomainGate]]:
    """Build gates, each with its own Redis connection, under one random key prefix."""
    clients: list[redis.Redis] = []

    def build(
        *, min_delay: float = 0.0, max_concurrency: int = 1, lease_seconds: float = 300
    ) -> DomainGate:
        clients.append(redis.Redis.from_url(redis_url))
        return DomainGate(
            clients[-1],
            prefix=prefix,
            min_delay=min_delay,
            max_concurrency=max_concurrency,
            lease_seconds=lease_seconds,
        )

    yield build
    cleaner = redis.Redis.from_url(redis_url)
    keys = list(cleaner.scan_iter(f"{prefix}*"))
    if keys:
        cleaner.delete(*keys)
    for client in [cleaner, *clients]:
        client.close()


@pytest.fixture
def granted(redis_url: str, prefix: str) -> Iterator[Callable[..., int]]:
    """When the gate granted a lease still held: Redis milliseconds, as the gate's script saw them.

    The gate records each lease in the host's lease set scored by its expiry (grant time plus
    the lease length), so the grant time is read from what the gate decided, not from when the
    thread holding the lease got round to reading a clock.
    """
    client = redis.Redis.from_url(redis_url)

    def read(lease: Lease, lease_seconds: float = 300) -> int:
        key = f"{prefix}scraper:gate:{{{lease.host}}}:leases"
        expiry: float | None = client.zscore(key, lease.id)
        assert expiry is not None, f"lease {lease.id} not recorded in {key}"
        return int(expiry) - math.ceil(lease_seconds * 1000)

    yield read
    client.close()


def redis_micros(client: redis.Redis) -> int:
    """The Redis server's clock in microseconds, the clock the gate decides by."""
    seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)


def redis_now(redis_url: str) -> int:
    """The Redis server's clock in milliseconds, as the gate keeps it."""
    with redis.Redis.from_url(redis_url) as client:
        return redis_micros(client) // 1000


def run_threads(target: Callable[[int], None], count: int) -> None:
    errors: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            target(n)
        except BaseException as exc:  # re-raised in the test's thread below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    if errors:
        raise errors[0]


def test_starts_are_spaced_across_workers(
    make: Callable[..., DomainGate], granted: Callable[..., int]
) -> None:
    gates = [make(min_delay=0.3, max_concurrency=10), make(min_delay=0.3, max_concurrency=10)]
    grants: list[int] = []

    def worker(n: int) -> None:
        for _ in range(3):
            with gates[n].acquire(HOST, max_wait=5) as lease:
                grants.append(granted(lease))

    run_threads(worker, 2)
    grants.sort()
    assert len(grants) == 6
    gaps = [later - earlier for earlier, later in zip(grants, grants[1:], strict=False)]
    assert min(gaps) >= 300, gaps


def test_concurrency_is_capped_across_workers(make: Callable[..., DomainGate]) -> None:
    gates = [make(max_concurrency=2) for _ in range(5)]
    lock = threading.Lock()
    held = peak = 0

    def worker(n: int) -> None:
        nonlocal held, peak
        for _ in range(2):
            with gates[n].acquire(HOST, max_wait=5):
                with lock:
                    held += 1
                    peak = max(peak, held)
                time.sleep(0.05)
                with lock:
                    held -= 1

    run_threads(worker, 5)
    assert peak == 2  # never above the cap, and the cap is actually used


def test_released_lease_frees_its_slot(make: Callable[..., DomainGate]) -> None:
    gate = make(max_concurrency=1)
    with gate.acquire(HOST, max_wait=0) as lease:
        assert lease.host == HOST
        with pytest.raises(TransientError):
            gate.acquire(HOST, max_wait=0)
    gate.acquire(HOST, max_wait=0).release()


def test_a_crashed_workers_lease_expires(
    make: Callable[..., DomainGate], granted: Callable[..., int]
) -> None:
    crashed = make(max_concurrency=2, lease_seconds=0.5)
    survivor = make(max_concurrency=2, lease_seconds=30)
    lost = granted(crashed.acquire(HOST, max_wait=0), lease_seconds=0.5)  # never released
    with survivor.acquire(HOST, max_wait=0):  # keeps the host's lease set alive for 30 s
        with pytest.raises(TransientError) as caught:
            survivor.acquire(HOST, max_wait=0)
        assert 0 < (caught.value.retry_after or 0) <= 0.5
        with survivor.acquire(HOST, max_wait=2) as freed:
            assert 500 <= granted(freed, lease_seconds=30) - lost < 1500


def test_a_long_wait_raises_instead_of_blocking(
    make: Callable[..., DomainGate], monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = make(min_delay=5)
    gate.acquire(HOST, max_wait=0).release()
    slept: list[float] = []
    real_sleep = time.sleep
    caller = threading.get_ident()

    def recorded_sleep(seconds: float) -> None:
        # time.sleep is the process's: only this thread's calls are the gate's.
        if threading.get_ident() == caller:
            slept.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", recorded_sleep)
    with pytest.raises(TransientError, match="busy") as caught:
        gate.acquire(HOST, max_wait=0.2)
    monkeypatch.undo()
    assert slept == []  # no pointless sleep before giving up
    # The next start is counted from the grant's millisecond rounded up: up to 1 ms more.
    assert 4.5 < (caught.value.retry_after or 0) <= 5.001


def test_defer_holds_back_every_worker(
    make: Callable[..., DomainGate], granted: Callable[..., int], redis_url: str
) -> None:
    seen_429, other = make(), make()
    before = redis_now(redis_url)
    seen_429.defer(HOST, 1.0)
    seen_429.defer(HOST, 0.1)  # a shorter deferral does not cut the longer one
    with other.acquire(HOST, max_wait=3) as lease:
        assert granted(lease) - before >= 1000


def test_hosts_do_not_block_each_other(make: Callable[..., DomainGate]) -> None:
    gate = make(min_delay=5, max_concurrency=1)
    held = gate.acquire(HOST, max_wait=0)
    with gate.acquire("other.example", max_wait=0):
        pass
    held.release()


def test_host_names_are_case_insensitive(make: Callable[..., DomainGate]) -> None:
    gate = make(max_concurrency=1)
    with gate.acquire(HOST, max_wait=0), pytest.raises(TransientError):
        gate.acquire(HOST.upper() + ".", max_wait=0)


def test_a_larger_per_call_delay_applies(
    make: Callable[..., DomainGate], granted: Callable[..., int]
) -> None:
    gate = make(min_delay=0, max_concurrency=5)
    with gate.acquire(HOST, max_wait=0, min_delay=0.4) as first:
        first_at = granted(first)
    with gate.acquire(HOST, max_wait=2) as second:
        assert granted(second) - first_at >= 400


def test_a_smaller_per_call_delay_does_not_shorten(make: Callable[..., DomainGate]) -> None:
    gate = make(min_delay=0.4, max_concurrency=5)
    gate.acquire(HOST, max_wait=0, min_delay=0.0).release()
    with pytest.raises(TransientError) as caught:
        gate.acquire(HOST, max_wait=0, min_delay=0.1)
    assert 0.3 < (caught.value.retry_after or 0) <= 0.401  # 1 ms: as in the test above


def test_keys_expire_when_the_host_goes_idle(
    make: Callable[..., DomainGate], redis_url: str
) -> None:
    host = f"idle-{uuid.uuid4().hex}.example"
    # Long enough that a loaded machine still sees the keys before they expire.
    gate = make(min_delay=2.0, lease_seconds=2.0)
    gate.acquire(host, max_wait=0)  # never released: its key must still expire
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(f"*{host}*"))
        assert len(keys) == 2
        ttls = [client.pttl(key) for key in keys]
        # The next start's key lives until its value, counted from the millisecond rounded up.
        assert all(0 < ttl <= 2001 for ttl in ttls), ttls
        eventually(
            lambda: not list(client.scan_iter(f"*{host}*")),
            timeout=10,
            message=f"the keys of {host} to expire",
        )


def test_the_next_start_is_never_set_short_of_the_full_delay(
    make: Callable[..., DomainGate], redis_url: str, prefix: str
) -> None:
    """Redis's clock runs in microseconds; a next start counted from the millisecond rounded down
    let the next request go up to 1 ms early (two requests reached a site 0.2993 s apart under a
    0.3 s Crawl-delay). Read against Redis's own clock, taken just before the gate's step."""
    gate = make(min_delay=0.3, max_concurrency=1)
    key = f"{prefix}scraper:gate:{{{HOST}}}:next"
    short: list[tuple[str, int, int, int]] = []

    def check(step: str, client: redis.Redis, clock_before: int) -> None:
        next_start = int(client.get(key) or 0)
        # The key must also outlive its value: gone, it would let a start through early.
        expires = int(client.execute_command("PEXPIRETIME", key))
        if next_start * 1000 < clock_before + 300_000 or expires < next_start:
            short.append((step, clock_before, next_start, expires))

    with redis.Redis.from_url(redis_url) as client:
        for _ in range(20):
            client.delete(key)  # each round starts with no delay pending
            before_grant = redis_micros(client)
            with gate.turn(HOST, max_wait=0):
                check("grant", client, before_grant)
                before_end = redis_micros(client)
            check("end", client, before_end)
    assert not short, short
