"""The state of every crawl, in Redis, shared by all scraper workers.

Levels are claimed and batches counted by atomic scripts, so no URL is claimed twice,
``max_pages`` is never exceeded and a redelivered batch changes nothing twice.
Design: docs/scraper.md#crawls.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import redis
from pydantic import BaseModel, ConfigDict

from scraper.records import PageRecord, failed_record
from tasklane.contracts.scraper import CrawlStatus, CrawlURL, FieldSelector
from tasklane.errors import PermanentError

# KEYS: meta, frontier:0 — ARGV: spec json, started_at, max_pages, max_depth, seeds...
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'spec', ARGV[1], 'started_at', ARGV[2], 'max_pages', ARGV[3],
  'max_depth', ARGV[4], 'state', 'running', 'level', -1, 'pending', 0, 'fetched', 0,
  'failed', 0, 'queued', 0, 'out_of_bounds', 0)
for i = 5, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
return 1
"""

# KEYS: meta, visited, frontier, level list, scheduled, redirected — ARGV: level, batch size
# Returns {code, urls joined by newlines}; code 1 claimed now, 0 claimed before (a replay),
# -1 unknown crawl, -2 not running, -3 the previous level is not done, -4 not the next level.
_ADVANCE = """
local meta = KEYS[1]
local state = redis.call('HGET', meta, 'state')
if not state then return {-1, ''} end
local level = tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', meta, 'level'))
if current >= level then return {0, redis.call('GET', KEYS[4]) or ''} end
if state ~= 'running' then return {-2, ''} end
if tonumber(redis.call('HGET', meta, 'pending')) > 0 then return {-3, ''} end
if level ~= current + 1 then return {-4, ''} end
local candidates = redis.call('SDIFF', KEYS[3], KEYS[2], KEYS[6])
table.sort(candidates)
local room = 0
if level <= tonumber(redis.call('HGET', meta, 'max_depth')) then
  room = tonumber(redis.call('HGET', meta, 'max_pages')) - redis.call('SCARD', KEYS[2])
end
local taken = {}
for i, url in ipairs(candidates) do
  if i > room then break end
  taken[i] = url
  redis.call('SADD', KEYS[2], url)
end
redis.call('HINCRBY', meta, 'out_of_bounds', #candidates - #taken)
redis.call('HINCRBY', meta, 'queued', #taken)
local joined = table.concat(taken, '\\n')
redis.call('SET', KEYS[4], joined)
redis.call('HSET', meta, 'level', level)
redis.call('DEL', KEYS[3])
local size = tonumber(ARGV[2])
local batches = math.ceil(#taken / size)
if batches == 0 then
  redis.call('HSET', meta, 'state', 'finishing')
else
  redis.call('HSET', meta, 'pending', batches)
  for b = 0, batches - 1 do redis.call('SADD', KEYS[5], level .. '.' .. b) end
end
return {1, joined}
"""

# KEYS: meta, pages, next frontier, scheduled, redirected — ARGV: n records, then per record
# url, json, ok (1/0), then the links offered to the next level, after a '--' marker; then the
# retry batch ids after a second '--'. Returns {new fetched, new failed, newly scheduled}.
_RECORD = """
local meta = KEYS[1]
local n = tonumber(ARGV[1])
local fetched, failed, scheduled = 0, 0, 0
for i = 0, n - 1 do
  local url, body, ok = ARGV[2 + 3 * i], ARGV[3 + 3 * i], ARGV[4 + 3 * i]
  if redis.call('HSETNX', KEYS[2], url, body) == 1 then
    if ok == '1' then fetched = fetched + 1 else failed = failed + 1 end
  end
end
local i = 2 + 3 * n
local section = 1
while i <= #ARGV do
  local value = ARGV[i]
  if value == '--' then
    section = section + 1
  elseif section == 1 then
    redis.call('SADD', KEYS[3], value)
  elseif section == 2 then
    redis.call('SADD', KEYS[5], value)
  elseif redis.call('SADD', KEYS[4], value) == 1 then
    scheduled = scheduled + 1
  end
  i = i + 1
end
redis.call('HINCRBY', meta, 'fetched', fetched)
redis.call('HINCRBY', meta, 'failed', failed)
redis.call('HINCRBY', meta, 'pending', scheduled)
return {fetched, failed, scheduled}
"""

# KEYS: meta, done, scheduled — ARGV: batch ids. Returns {pending, level, state}.
# Only scheduled batches count: finishing an id that was never scheduled changes nothing.
_FINISH = """
for _, id in ipairs(ARGV) do
  if redis.call('SISMEMBER', KEYS[3], id) == 1 and redis.call('SADD', KEYS[2], id) == 1 then
    redis.call('HINCRBY', KEYS[1], 'pending', -1)
  end
end
local values = redis.call('HMGET', KEYS[1], 'pending', 'level', 'state')
return {tonumber(values[1]), tonumber(values[2]), values[3]}
"""


class CrawlNotFoundError(PermanentError):
    """No crawl of that id (never started, or its records have expired)."""


class CrawlSpec(BaseModel):
    """How a crawl fetches, fixed when it starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_domains: list[str]
    selectors: dict[str, FieldSelector]
    max_bytes: int
    timeout: float
    batch_size: int
    build_report: bool = False


@dataclass(frozen=True)
class Level:
    """The URLs claimed for one level, in batch order, and what became of the crawl."""

    level: int
    urls: list[str]
    state: str

    def batches(self, size: int) -> Iterator[tuple[str, list[str]]]:
        """``(batch_id, urls)`` in order; the ids match the ones the claim scheduled."""
        for index, start in enumerate(range(0, len(self.urls), size)):
            yield f"{self.level}.{index}", self.urls[start : start + size]


@dataclass(frozen=True)
class BatchEnd:
    """What finishing a batch left: whether it was the last one of its level."""

    pending: int
    level: int
    state: str

    def level_done(self, level: int) -> bool:
        """Whether the next level is due (this batch's level, nothing pending, running)."""
        return self.pending == 0 and self.level == level and self.state == "running"


class CrawlStore:
    """All crawls' state in one Redis, keys under ``<namespace>scraper:crawl:{id}:``.

    Args:
        client: the Redis every scraper worker uses.
        namespace: the platform namespace (``TASKLANE_NAMESPACE``).
        ttl: seconds a completed crawl's records stay queryable.
    """

    def __init__(self, client: redis.Redis, *, namespace: str = "", ttl: int = 7 * 86_400):
        self._client = client
        self._prefix = f"{namespace}scraper:crawl:"
        self._ttl = ttl
        self._create = client.register_script(_CREATE)
        self._advance = client.register_script(_ADVANCE)
        self._record = client.register_script(_RECORD)
        self._finish = client.register_script(_FINISH)

    def key(self, crawl_id: str, part: str) -> str:
        """The Redis key of one part of a crawl (meta, visited, pages, ...)."""
        return f"{self._prefix}{{{crawl_id}}}:{part}"

    def create(
        self,
        crawl_id: str,
        spec: CrawlSpec,
        *,
        seeds: Sequence[str],
        max_pages: int,
        max_depth: int,
        started_at: str,
    ) -> bool:
        """Record a new crawl with its seeds as level 0's frontier; False if it exists."""
        keys = [self.key(crawl_id, "meta"), self.key(crawl_id, "frontier:0")]
        args: list[str | int] = [spec.model_dump_json(), started_at, max_pages, max_depth]
        args += seeds
        return bool(self._create(keys=keys, args=args))

    def spec(self, crawl_id: str) -> CrawlSpec:
        """How the crawl fetches, or :class:`CrawlNotFoundError`."""
        raw = self._client.hget(self.key(crawl_id, "meta"), "spec")
        if raw is None:
            raise CrawlNotFoundError(f"no crawl {crawl_id!r}")
        return CrawlSpec.model_validate_json(raw)

    def advance(self, crawl_id: str, level: int, batch_size: int) -> Level:
        """Claim ``level`` from its frontier: unvisited URLs, within the page budget and depth.

        A repeated call for a level already claimed returns the same URLs.

        Raises:
            CrawlNotFoundError: no such crawl.
            PermanentError: the crawl is not at the level before ``level``, or not running.
        """
        names = (
            "meta",
            "visited",
            f"frontier:{level}",
            f"level:{level}",
            "scheduled",
            "redirected",
        )
        keys = [self.key(crawl_id, name) for name in names]
        code, joined = self._advance(keys=keys, args=[level, batch_size])
        code = int(code)
        if code == -1:
            raise CrawlNotFoundError(f"no crawl {crawl_id!r}")
        if code < 0:
            problem = {-2: "is not running", -3: "has batches pending", -4: "is at another level"}
            raise PermanentError(f"crawl {crawl_id!r} {problem[code]}: cannot start level {level}")
        text = _text(joined)
        urls = text.split("\n") if text else []
        state = self._client.hget(self.key(crawl_id, "meta"), "state")
        return Level(level, urls, _text(state))

    def recorded(self, crawl_id: str, urls: Sequence[str]) -> set[str]:
        """Which of ``urls`` already have a record (from an earlier delivery of a batch)."""
        if not urls:
            return set()
        found = self._client.hmget(self.key(crawl_id, "pages"), list(urls))
        return {url for url, value in zip(urls, found, strict=True) if value is not None}

    def record(
        self,
        crawl_id: str,
        level: int,
        records: Iterable[PageRecord],
        *,
        links: Iterable[str] = (),
        redirected: Iterable[str] = (),
        retry_batches: Iterable[str] = (),
    ) -> tuple[int, int, int]:
        """Store page records (first one of a URL wins), offer ``links`` to the next level,
        mark ``redirected`` final URLs as visited and schedule ``retry_batches`` of ``level``.

        Returns:
            Records newly counted as fetched and as failed, and retry batches newly scheduled.
        """
        args: list[str | int] = []
        count = 0
        for record in records:
            args += [record.url, record.model_dump_json(), 1 if record.ok else 0]
            count += 1
        args = [count, *args, *links, "--", *redirected, "--", *retry_batches]
        names = ("meta", "pages", f"frontier:{level + 1}", "scheduled", "redirected")
        result = self._record(keys=[self.key(crawl_id, name) for name in names], args=args)
        fetched, failed, scheduled = (int(value) for value in result)
        return fetched, failed, scheduled

    def finish_batch(self, crawl_id: str, *batch_ids: str) -> BatchEnd:
        """Count scheduled ``batch_ids`` as finished (once, however often it is called)."""
        keys = [self.key(crawl_id, name) for name in ("meta", "done", "scheduled")]
        pending, level, state = self._finish(keys=keys, args=list(batch_ids))
        if state is None:
            raise CrawlNotFoundError(f"no crawl {crawl_id!r}")
        return BatchEnd(int(pending), int(level), _text(state))

    def settle_dead_batch(
        self, crawl_id: str, batch_id: str, level: int, items: Sequence[CrawlURL], error: str
    ) -> BatchEnd:
        """Account for a batch that was dead-lettered, so that its crawl still completes.

        Its URLs without a record are recorded as failed (``dead-lettered``), and the batch
        and any retry batch it may have scheduled without sending are counted as finished.
        """
        recorded = self.recorded(crawl_id, [item.url for item in items])
        records = [
            failed_record(item.url, level, item.attempt + 1, "dead-lettered", error)
            for item in items
            if item.url not in recorded
        ]
        self.record(crawl_id, level, records)
        retry_ids = [retry_batch_id(batch_id, index) for index in range(len(items))]
        return self.finish_batch(crawl_id, *retry_ids, batch_id)

    def pages(self, crawl_id: str) -> list[PageRecord]:
        """Every page record of the crawl, sorted by URL."""
        records = [
            PageRecord.model_validate_json(value)
            for _, value in self._client.hscan_iter(self.key(crawl_id, "pages"), count=1000)
        ]
        return sorted(records, key=lambda record: record.url)

    def complete(self, crawl_id: str, *, data_uri: str, finished_at: str) -> None:
        """Mark the crawl completed with its data in the store, and let its records expire."""
        meta = self.key(crawl_id, "meta")
        self._client.hset(
            meta, mapping={"state": "completed", "data_uri": data_uri, "finished_at": finished_at}
        )
        names = ["meta", "visited", "pages", "scheduled", "done", "redirected"]
        depth = int(self._client.hget(meta, "max_depth") or 0)
        names += [f"level:{n}" for n in range(depth + 2)]
        names += [f"frontier:{n}" for n in range(depth + 3)]
        with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.expire(self.key(crawl_id, name), self._ttl)
            pipe.execute()

    def status(self, crawl_id: str) -> CrawlStatus:
        """Where the crawl stands, or :class:`CrawlNotFoundError`."""
        raw = self._client.hgetall(self.key(crawl_id, "meta"))
        if not raw:
            raise CrawlNotFoundError(f"no crawl {crawl_id!r}")
        meta = {_text(key): _text(value) for key, value in raw.items()}
        return CrawlStatus(
            crawl_id=crawl_id,
            state=meta["state"],
            level=max(0, int(meta["level"])),
            max_pages=int(meta["max_pages"]),
            max_depth=int(meta["max_depth"]),
            queued=int(meta["queued"]),
            fetched=int(meta["fetched"]),
            failed=int(meta["failed"]),
            pending_batches=int(meta["pending"]),
            out_of_bounds=int(meta["out_of_bounds"]),
            started_at=meta["started_at"],
            finished_at=meta.get("finished_at"),
            data_uri=meta.get("data_uri"),
        )


def retry_batch_id(batch_id: str, position: int) -> str:
    """The id of the retry batch of the URL at ``position`` in batch ``batch_id``.

    Fixed by the URL's place in its batch, so a redelivered batch schedules the same ids.
    """
    return f"{batch_id}.r{position}"


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def encode_pages(records: Iterable[PageRecord]) -> bytes:
    """``pages.jsonl``: one record per line."""
    return b"".join(record.model_dump_json().encode() + b"\n" for record in records)


def decode_pages(data: bytes) -> list[PageRecord]:
    """Records back from ``pages.jsonl``."""
    return [PageRecord.model_validate(json.loads(line)) for line in data.splitlines() if line]
