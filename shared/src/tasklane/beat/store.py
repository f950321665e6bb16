"""Schedule entries, their state, the Beat lock and Beat's status, in Redis.

Every process that manages schedules and every Beat process share these keys. A slot is claimed
by one compare-and-set script before it is published, so it fires at most once.
Design: docs/beat.md#exactly-one-active-beat.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict

from tasklane.beat.errors import (
    ScheduleError,
    ScheduleExistsError,
    ScheduleNotFoundError,
)
from tasklane.beat.models import (
    AuditRecord,
    EntryState,
    EntryView,
    Firing,
    ScheduleEntry,
    Source,
    next_slot,
    passed_slot,
)
from tasklane.contracts import REGISTRY, ContractRegistry
from tasklane.errors import TasklaneError

# KEYS: state — ARGV: slot (epoch µs), now iso, slot iso, claimer. Returns 1 when the slot is
# the claimer's: claimed by this call, or by the same claimer before (a claim whose answer or
# replication it never saw; written again, so a WAIT after it covers it). No claimer: never again.
_CLAIM = """
local last = tonumber(redis.call('HGET', KEYS[1], 'last_slot_us') or '-1')
local slot = tonumber(ARGV[1])
if slot < last then return 0 end
if slot == last then
  if ARGV[4] == '' or redis.call('HGET', KEYS[1], 'claimed_by') ~= ARGV[4] then return 0 end
  redis.call('HSET', KEYS[1], 'claimed_by', ARGV[4])
  return 1
end
redis.call('HSET', KEYS[1], 'last_slot_us', ARGV[1], 'last_slot', ARGV[3], 'last_run_at', ARGV[2],
  'claimed_by', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'total_run_count', 1)
return 1
"""

# KEYS: state — ARGV: slot (epoch µs), slot iso. Marks slots up to it as passed without firing
# them (no run counted), unless a later one fired already.
_PASS = """
local last = tonumber(redis.call('HGET', KEYS[1], 'last_slot_us') or '-1')
if tonumber(ARGV[1]) <= last then return 0 end
redis.call('HSET', KEYS[1], 'last_slot_us', ARGV[1], 'last_slot', ARGV[2])
redis.call('HDEL', KEYS[1], 'claimed_by')
return 1
"""

# KEYS: lock — ARGV: token, ttl ms. 1 when the caller holds the lock after the call.
_HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: version, changes, floor — ARGV: the feed's length, then the names changed. Returns the
# new version. Past the length the oldest changes go, and the floor keeps the newest version
# that went: a reader behind it reloads everything.
_BUMP = """
local version = redis.call('INCR', KEYS[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[2], version, ARGV[i]) end
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[1])
if excess > 0 then
  local last = redis.call('ZRANGE', KEYS[2], excess - 1, excess - 1, 'WITHSCORES')
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
  redis.call('SET', KEYS[3], last[2])
end
return version
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


#: Firings kept per entry (run history), and audit records kept per entry and in all.
HISTORY_LENGTH = 50
#: Names kept in the change feed. One-offs made under new names would grow it without end; a
#: Beat that falls behind what was trimmed reloads every entry.
CHANGE_FEED_LENGTH = 20_000
AUDIT_PER_ENTRY = 200
AUDIT_LENGTH = 10_000


class ClaimsNotReplicatedError(redis.ConnectionError):
    """The master took the claims, but fewer replicas than asked have them yet (``WAIT``).

    A failover now could forget them, so the slots must not fire yet; the claimer claims
    them again on its next tick (see :meth:`ScheduleStore.claim_many`).
    """


class BeatStatus(BaseModel):
    """What one Beat process last reported."""

    model_config = ConfigDict(frozen=True)

    process: str
    last_tick: datetime
    schedules: int
    holds_lock: bool
    problems: dict[str, str] = {}


class ScheduleStore:
    """Entries, state, lock and status under ``<namespace>tasklane:beat:``."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str = "",
        registry: ContractRegistry = REGISTRY,
        change_feed_length: int = CHANGE_FEED_LENGTH,
    ) -> None:
        self._client = client
        self._prefix = f"{namespace}tasklane:beat:"
        self.registry = registry
        self.change_feed_length = change_feed_length
        self._claim = client.register_script(_CLAIM)
        self._hold = client.register_script(_HOLD)
        self._release = client.register_script(_RELEASE)
        self._pass = client.register_script(_PASS)
        self._bump = client.register_script(_BUMP)

    def key(self, part: str) -> str:
        """The Redis key of one part of the schedule store."""
        return f"{self._prefix}{part}"

    # ------------------------------------------------------------------ entries

    def add(
        self, entry: ScheduleEntry, *, replace: bool = False, now: datetime | None = None
    ) -> ScheduleEntry:
        """Validate ``entry`` against its contract and store it.

        A replaced entry starts afresh (run count, last run and slots owed); :meth:`update`
        keeps them.

        Raises:
            UnknownContractError, PayloadValidationError, ScheduleInvalidError: it is invalid.
            ScheduleExistsError: the name is taken and ``replace`` is false, or it is managed by
                a schedule file or code and this is not that source.
        """
        moment = now or datetime.now(UTC)
        validated = entry.validated(self.registry)
        existing = self._load(entry.name)
        if existing is not None:
            if existing.source != entry.source:
                raise ScheduleExistsError(
                    f"schedule {entry.name!r} is managed by {existing.source}; change it there"
                )
            if not replace:
                raise ScheduleExistsError(f"schedule {entry.name!r} exists already")
        created = (existing.created_at if existing else None) or moment
        stored = validated.model_copy(update={"created_at": created})
        with self._client.pipeline() as pipe:
            pipe.hset(self.key("entries"), entry.name, stored.model_dump_json())
            if existing is not None:
                pipe.delete(self._state_key(entry.name), self._firings_key(entry.name))
                self._pass_slots(pipe, stored, moment)
            self._touch(pipe, [entry.name])
            pipe.execute()
        return stored

    def update(self, entry: ScheduleEntry, *, now: datetime | None = None) -> ScheduleEntry:
        """Store a changed version of an existing entry, keeping its state and history.

        A changed schedule owes nothing before ``now``: its slots up to now count as passed.

        Raises:
            ScheduleNotFoundError: no entry of that name.
            ScheduleError: it is managed by a schedule file or code.
            UnknownContractError, PayloadValidationError, ScheduleInvalidError: it is invalid.
        """
        moment = now or datetime.now(UTC)
        existing = self.get(entry.name)
        if existing.source != "api":
            raise ScheduleError(
                f"schedule {entry.name!r} is managed by {existing.source}; change it there"
            )
        stored = entry.validated(self.registry).model_copy(
            update={"created_at": existing.created_at, "source": existing.source}
        )
        with self._client.pipeline() as pipe:
            pipe.hset(self.key("entries"), entry.name, stored.model_dump_json())
            if stored.schedule != existing.schedule or stored.start_at != existing.start_at:
                self._pass_slots(pipe, stored, moment)
            self._touch(pipe, [entry.name])
            pipe.execute()
        return stored

    def get(self, name: str) -> ScheduleEntry:
        """The entry, or :class:`ScheduleNotFoundError`."""
        entry = self._load(name)
        if entry is None:
            raise ScheduleNotFoundError(f"no schedule {name!r}")
        return entry

    def entries(self) -> list[ScheduleEntry]:
        """Every entry, sorted by name (not re-validated: see :meth:`problem`)."""
        raw = self._client.hgetall(self.key("entries"))
        entries = [ScheduleEntry.model_validate_json(value) for value in raw.values()]
        return sorted(entries, key=lambda entry: entry.name)

    def set_enabled(
        self, name: str, enabled: bool, *, now: datetime | None = None
    ) -> ScheduleEntry:
        """Enable or disable an entry (whatever manages it).

        Enabling does not make up the slots that passed while it was disabled: they count as
        passed, neither fired nor missed, and the next run is the next slot after now.
        """
        current = self.get(name)
        entry = current.model_copy(update={"enabled": enabled})
        with self._client.pipeline() as pipe:
            pipe.hset(self.key("entries"), name, entry.model_dump_json())
            if enabled and not current.enabled:
                self._pass_slots(pipe, entry, now or datetime.now(UTC))
            self._touch(pipe, [name])
            pipe.execute()
        return entry

    def remove(self, name: str) -> ScheduleEntry:
        """Remove an entry, its state and run history (its audit trail stays); return it.

        Raises:
            ScheduleNotFoundError: no entry of that name.
            ScheduleError: it is managed by a schedule file or code.
        """
        entry = self.get(name)
        if entry.source != "api":
            raise ScheduleError(f"schedule {name!r} is managed by {entry.source}; remove it there")
        self._delete([name])
        return entry

    def sync_source(self, source: Source, entries: Sequence[ScheduleEntry]) -> list[str]:
        """Make the entries of ``source`` (a file, code) exactly ``entries``.

        Entries are stored as given (validate them first). The enabled flag of an entry that
        stays is kept, so that disabling one at run time survives a reload of its file; an
        entry gone from the source is removed.

        Returns:
            The names removed.
        """
        current = {entry.name: entry for entry in self.entries()}
        clash = [e.name for e in entries if e.name in current and current[e.name].source != source]
        if clash:
            raise ScheduleExistsError(f"schedules {clash} exist already, managed elsewhere")
        wanted = {entry.name for entry in entries}
        gone = [name for name, e in current.items() if e.source == source and name not in wanted]
        now = datetime.now(UTC)
        changed: list[str] = []
        with self._client.pipeline() as pipe:
            for entry in entries:
                old = current.get(entry.name)
                update: dict[str, Any] = {"source": source}
                update["created_at"] = (old.created_at if old else None) or entry.created_at or now
                if old is not None and old.schedule == entry.schedule:
                    update["enabled"] = old.enabled
                stored = entry.model_copy(update=update)
                if old is not None and old.schedule != entry.schedule:
                    pipe.delete(self._state_key(entry.name))
                    self._pass_slots(pipe, stored, now)
                if old is None or old != stored:
                    pipe.hset(self.key("entries"), entry.name, stored.model_dump_json())
                    changed.append(entry.name)
            if changed:
                self._touch(pipe, changed)
            pipe.execute()
        self._delete(gone)
        return gone

    def version(self) -> int:
        """A number that changes whenever an entry does."""
        return int(self._client.get(self.key("version")) or 0)

    def changed_since(self, version: int) -> tuple[int, list[str] | None]:
        """The current version and the names of the entries changed or removed after ``version``.

        One round trip whatever the number of entries: Beat reloads only what changed. The names
        are None when the feed no longer reaches back to ``version`` (trimmed past it).
        """
        with self._client.pipeline(transaction=True) as pipe:
            pipe.get(self.key("version"))
            pipe.get(self.key("changes:floor"))
            pipe.zrangebyscore(self.key("changes"), f"({version}", "+inf")
            current, floor, names = pipe.execute()
        if version < int(floor or 0):
            return int(current or 0), None
        return int(current or 0), [_text(name) for name in names]

    def load_many(self, names: Sequence[str]) -> dict[str, ScheduleEntry | None]:
        """The entries of ``names`` (None for one removed), in one round trip."""
        if not names:
            return {}
        raw = self._client.hmget(self.key("entries"), list(names))
        return {
            name: None if value is None else ScheduleEntry.model_validate_json(value)
            for name, value in zip(names, raw, strict=True)
        }

    def states(self, names: Sequence[str]) -> dict[str, EntryState]:
        """The state of each of ``names``, in one round trip."""
        with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self._state_key(name))
            replies = pipe.execute()
        return {name: _state(raw) for name, raw in zip(names, replies, strict=True)}

    def problem(self, entry: ScheduleEntry) -> str | None:
        """Why ``entry`` cannot fire (its contract is gone or its payload no longer fits)."""
        try:
            entry.validated(self.registry)
        except TasklaneError as exc:
            return str(exc)
        return None

    # ------------------------------------------------------------------ state

    def state(self, name: str) -> EntryState:
        """What has happened to the entry so far."""
        return _state(self._client.hgetall(self._state_key(name)))

    def view(self, name: str, now: datetime | None = None) -> EntryView:
        """The entry with its state, next run and any problem."""
        return self._view(self.get(name), now or datetime.now(UTC))

    def views(
        self, now: datetime | None = None, *, names: Sequence[str] | None = None
    ) -> list[EntryView]:
        """Every entry (or those of ``names`` that exist) as :meth:`view` shows it.

        Two round trips whatever the number: one for the entries, one for all their states.
        """
        moment = now or datetime.now(UTC)
        if names is None:
            entries = self.entries()
        else:
            entries = [e for e in self.load_many(list(names)).values() if e is not None]
        states = self.states([entry.name for entry in entries])
        return [self._view(entry, moment, states[entry.name]) for entry in entries]

    def claim(self, name: str, slot: datetime, now: datetime, claimer: str = "") -> bool:
        """Record that ``slot`` fires now; False if it (or a later one) fired already.

        A ``claimer`` gets True again for a slot it claimed itself (see :meth:`claim_many`);
        without one, a slot is claimed once.
        """
        return self.claim_many([(name, slot)], now, claimer=claimer)[0]

    def claim_many(
        self,
        slots: Sequence[tuple[str, datetime]],
        now: datetime,
        *,
        claimer: str = "",
        replicas: int = 0,
        timeout: float = 1.0,
    ) -> list[bool]:
        """:meth:`claim` each ``(name, slot)``, in one round trip; whether each is ``claimer``'s.

        A claim that was written but whose answer never came back (Redis went away) can be
        made again by the same ``claimer``: True again, never a second run counted.
        With ``replicas``, the round trip ends with ``WAIT``: the claims hold once that many
        replicas have them, so a failover to a replica cannot forget them and fire the slots
        again.

        Raises:
            ClaimsNotReplicatedError: fewer replicas acknowledged within ``timeout`` seconds.
        """
        with self._client.pipeline(transaction=False) as pipe:
            for name, slot in slots:
                micros = int(slot.timestamp() * 1_000_000)
                self._claim(
                    keys=[self._state_key(name)],
                    args=[micros, now.isoformat(), slot.isoformat(), claimer],
                    client=pipe,
                )
            if replicas:
                pipe.wait(replicas, max(1, int(timeout * 1000)))
            answers = pipe.execute()
        if replicas and int(answers[-1]) < replicas:
            raise ClaimsNotReplicatedError(
                f"{answers[-1]} of {replicas} replicas acknowledged {len(slots)} claimed "
                f"slots within {timeout:g}s"
            )
        return [bool(claimed) for claimed in answers[: len(slots)]]

    def record_firings(self, firings: Sequence[tuple[str, Firing]]) -> None:
        """:meth:`record_firing` each ``(name, firing)``, in one round trip."""
        if not firings:
            return
        with self._client.pipeline(transaction=False) as pipe:
            for name, firing in firings:
                key = self._firings_key(name)
                pipe.lpush(key, firing.model_dump_json())
                pipe.ltrim(key, 0, HISTORY_LENGTH - 1)
            pipe.execute()

    def record_manual_run(self, name: str, now: datetime) -> None:
        """Count a run-now: it changes the run count and time, not the slots owed."""
        with self._client.pipeline() as pipe:
            pipe.hset(self._state_key(name), "last_run_at", now.isoformat())
            pipe.hincrby(self._state_key(name), "total_run_count", 1)
            pipe.execute()

    # ------------------------------------------------------------------ history and audit

    def record_firing(self, name: str, firing: Firing) -> None:
        """Add a firing to the entry's run history (the last :data:`HISTORY_LENGTH` are kept)."""
        key = self._firings_key(name)
        with self._client.pipeline() as pipe:
            pipe.lpush(key, firing.model_dump_json())
            pipe.ltrim(key, 0, HISTORY_LENGTH - 1)
            pipe.execute()

    def firings(self, name: str, limit: int = 20) -> list[Firing]:
        """The entry's last ``limit`` firings, newest first."""
        raw = self._client.lrange(self._firings_key(name), 0, max(0, limit - 1))
        return [Firing.model_validate_json(value) for value in raw]

    def record_audit(self, record: AuditRecord) -> None:
        """Keep ``record`` in the entry's audit trail and in the trail of all entries."""
        value = record.model_dump_json()
        per_entry = self.key(f"audit:{record.name}")
        with self._client.pipeline() as pipe:
            pipe.lpush(per_entry, value)
            pipe.ltrim(per_entry, 0, AUDIT_PER_ENTRY - 1)
            pipe.lpush(self.key("audit"), value)
            pipe.ltrim(self.key("audit"), 0, AUDIT_LENGTH - 1)
            pipe.execute()

    def audit(self, name: str | None = None, limit: int = 100) -> list[AuditRecord]:
        """The last ``limit`` audit records of one entry (or of all), newest first."""
        key = self.key("audit" if name is None else f"audit:{name}")
        raw = self._client.lrange(key, 0, max(0, limit - 1))
        return [AuditRecord.model_validate_json(value) for value in raw]

    # ------------------------------------------------------------------ lock and status

    def hold_lock(self, token: str, ttl: float) -> bool:
        """Take or keep the Beat lock for ``ttl`` seconds; whether ``token`` holds it now."""
        return bool(self._hold(keys=[self.key("lock")], args=[token, max(1, int(ttl * 1000))]))

    def release_lock(self, token: str) -> None:
        """Let the lock go at once if ``token`` holds it (a clean shutdown)."""
        self._release(keys=[self.key("lock")], args=[token])

    def lock_holder(self) -> str | None:
        """The token holding the lock, if any."""
        value = self._client.get(self.key("lock"))
        return _text(value) if value is not None else None

    def report(self, status: BeatStatus, ttl: float) -> None:
        """Publish one Beat process's status; it disappears ``ttl`` seconds after the last."""
        key = self.key(f"status:{status.process}")
        self._client.set(key, status.model_dump_json(), px=max(1, int(ttl * 1000)))

    def clear_status(self, process: str) -> None:
        """Forget one Beat process's status at once (it stopped cleanly)."""
        self._client.delete(self.key(f"status:{process}"))

    def statuses(self) -> list[BeatStatus]:
        """What every live Beat process last reported."""
        keys = list(self._client.scan_iter(self.key("status:*")))
        values = self._client.mget(keys) if keys else []
        return sorted(
            (BeatStatus.model_validate_json(v) for v in values if v is not None),
            key=lambda status: status.process,
        )

    # ------------------------------------------------------------------ internals

    def _view(
        self, entry: ScheduleEntry, now: datetime, state: EntryState | None = None
    ) -> EntryView:
        state = state if state is not None else self.state(entry.name)
        problem = self.problem(entry)
        upcoming = None if problem else next_slot(entry, state, now)
        return EntryView(entry=entry, state=state, next_run_at=upcoming, problem=problem)

    def _load(self, name: str) -> ScheduleEntry | None:
        raw = self._client.hget(self.key("entries"), name)
        return None if raw is None else ScheduleEntry.model_validate_json(raw)

    def _state_key(self, name: str) -> str:
        return self.key(f"state:{name}")

    def _firings_key(self, name: str) -> str:
        return self.key(f"firings:{name}")

    def _pass_slots(self, pipe: redis.client.Pipeline, entry: ScheduleEntry, now: datetime) -> None:
        slot = passed_slot(entry, now)
        if slot is not None:
            micros = int(slot.timestamp() * 1_000_000)
            self._pass(
                keys=[self._state_key(entry.name)], args=[micros, slot.isoformat()], client=pipe
            )

    def _touch(self, pipe: redis.client.Pipeline, names: Sequence[str]) -> None:
        # A new version, and each name's change at it: Beat reloads only the names changed.
        self._bump(
            keys=[self.key("version"), self.key("changes"), self.key("changes:floor")],
            args=[self.change_feed_length, *names],
            client=pipe,
        )

    def _delete(self, names: Iterable[str]) -> None:
        names = list(names)
        if not names:
            return
        with self._client.pipeline() as pipe:
            pipe.hdel(self.key("entries"), *names)
            pipe.delete(*[self._state_key(name) for name in names])
            pipe.delete(*[self._firings_key(name) for name in names])
            self._touch(pipe, names)
            pipe.execute()


def process_name() -> str:
    """``<host>:<pid>:<random>``: tells Beat processes apart, restarts included."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _state(raw: dict[Any, Any]) -> EntryState:
    values = {_text(k): _text(v) for k, v in raw.items()}
    return EntryState.model_validate(
        {
            "last_run_at": values.get("last_run_at"),
            "total_run_count": int(values.get("total_run_count", 0)),
            "last_slot": values.get("last_slot"),
        }
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
