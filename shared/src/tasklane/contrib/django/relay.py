"""The outbox relay: sends committed outbox rows to the broker in commit order, marks them sent.

On PostgreSQL any number of relays may run: each contract's rows are taken under an advisory
lock, and a row is never sent before a transaction with a lower id that may still write one has
ended. ``manage.py tasklane_relay`` runs one.
Design: docs/django.md#the-relay-managepy-tasklane_relay.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, connections, transaction
from django.db.models import Count, F, Min
from django.utils import timezone

from tasklane.contrib.django.conf import options
from tasklane.contrib.django.models import OutboxMessage
from tasklane.contrib.django.outbox import CHANNEL
from tasklane.contrib.django.relay_metrics import RelayHealth, RelayMetrics
from tasklane.errors import BrokerUnavailableError
from tasklane.wire.protocol import TaskMessage

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from tasklane.publish import Publisher

logger = logging.getLogger(__name__)

#: Back-off after a failed pass (broker or database): the first pause, doubled up to the last.
FIRST_BACKOFF = 1.0
LAST_BACKOFF = 30.0
#: Seconds between two prunes of sent rows, and rows deleted per statement.
PRUNE_INTERVAL = 60.0
PRUNE_BATCH = 1000
#: Seconds between two refreshes of the backlog gauges (one grouped count each), at least; a
#: count that took long (a backlog of millions) waits ten times as long before the next.
BACKLOG_INTERVAL = 1.0
#: First pause before looking again at rows held back by a transaction still running.
HELD_BACK_PAUSE = 0.05
#: Longest uninterrupted wait: a stop request or a NOTIFY is seen within this.
WAIT_SLICE = 0.5

_PENDING = OutboxMessage.State.PENDING
_SENT = OutboxMessage.State.SENT
_PARKED = OutboxMessage.State.PARKED

# Distinct contracts with pending rows, one index probe each (a loose index scan of the
# partial index) rather than a scan of every pending row.
_PENDING_CONTRACTS = """
WITH RECURSIVE pending (contract) AS (
    (SELECT contract FROM {table} WHERE state = 'pending' ORDER BY contract LIMIT 1)
    UNION ALL
    SELECT (SELECT o.contract FROM {table} o
            WHERE o.state = 'pending' AND o.contract > pending.contract
            ORDER BY o.contract LIMIT 1)
    FROM pending WHERE pending.contract IS NOT NULL
)
SELECT contract FROM pending WHERE contract IS NOT NULL
"""

_CONTRACT_LOCK = "SELECT pg_try_advisory_xact_lock(hashtextextended('tasklane_outbox:' || %s, 0))"

# Below the snapshot's xmin every transaction has ended: a running one with a lower id, which
# may still write a row, is never overtaken. The bound is a range of the partial index, so rows
# held back are not even read. (Every row written on PostgreSQL has its txid.)
_CLAIM = """
SELECT id, task_id, message, created_at FROM {table}
WHERE state = 'pending' AND contract = %s
  AND txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
ORDER BY txid, id
LIMIT %s
FOR UPDATE SKIP LOCKED
"""


@dataclass(frozen=True)
class _Row:
    id: int
    task_id: str
    message: Any
    created_at: datetime


@dataclass
class _PassResult:
    """What one pass over the contracts with pending rows did."""

    sent: int = 0
    parked: int = 0
    #: Rows were pending but not taken: a transaction with a lower id was still running, or
    #: another relay held the contract.
    held_back: bool = False

    @property
    def progressed(self) -> bool:
        return bool(self.sent or self.parked)


@dataclass
class _Backoff:
    pause: float = 0.0
    _next: float = field(default=FIRST_BACKOFF)

    def failed(self) -> float:
        self.pause, self._next = self._next, min(self._next * 2, LAST_BACKOFF)
        return self.pause

    def succeeded(self) -> None:
        self.pause, self._next = 0.0, FIRST_BACKOFF


class Relay:
    """Sends the outbox's rows to the broker; usable without the management command.

    Args:
        publisher: sends the messages; the process's ``publishing.publisher()`` when omitted.
            Rows of a contract its registry does not hold are parked.
        using: the outbox's database alias (``OUTBOX_DATABASE``).
        batch_size: rows claimed, sent and marked per transaction (``RELAY_BATCH_SIZE``).
        poll_interval: seconds between polls when no NOTIFY comes (``RELAY_POLL_INTERVAL``).
        retention: seconds a sent row is kept (``OUTBOX_RETENTION``).
        metrics: where to count; a registry of its own when omitted.
    """

    def __init__(
        self,
        *,
        publisher: Publisher | None = None,
        using: str | None = None,
        batch_size: int | None = None,
        poll_interval: float | None = None,
        retention: float | None = None,
        metrics: RelayMetrics | None = None,
    ) -> None:
        config = options()
        if publisher is None:
            from tasklane.contrib.django.publishing import publisher as process_publisher

            publisher = process_publisher()
        self.publisher = publisher
        self.using = using or config.outbox_database
        self.batch_size = batch_size or config.relay_batch_size
        self.poll_interval = poll_interval or config.relay_poll_interval
        self.retention = config.outbox_retention if retention is None else retention
        self.metrics = RelayMetrics() if metrics is None else metrics
        self.health = RelayHealth()
        self._known = config.contracts
        self._stop = threading.Event()
        self._pruned_at: float | None = None
        self._backlog_due = 0.0
        self._held_pause = 0.0

    @property
    def _connection(self) -> BaseDatabaseWrapper:
        return connections[self.using]

    @property
    def _postgres(self) -> bool:
        return self._connection.vendor == "postgresql"

    def run_once(self) -> int:
        """One batch of every contract with pending rows; returns the rows sent.

        Raises:
            BrokerUnavailableError: the broker did not take a batch; its rows stay pending
                with ``attempts`` and ``last_error`` updated (rows it did take are marked sent).
            DatabaseError: the outbox database failed.
        """
        return self._pass().sent

    def drain(self, held_wait: float = 0.0) -> int:
        """Run passes until nothing more can be sent now; returns the rows sent.

        Args:
            held_wait: seconds to keep looking at rows held back (by a transaction still open
                anywhere on the PostgreSQL server, or by another relay) before giving up on them.
                The wait starts again whenever a pass sends something.
        """
        sent = 0
        deadline: float | None = None
        pause = 0.0
        while not self._stop.is_set():
            result = self._pass()
            sent += result.sent
            if result.progressed:
                deadline, pause = None, 0.0
                continue
            if not result.held_back:
                break
            now = time.monotonic()
            deadline = now + held_wait if deadline is None else deadline
            if now >= deadline:
                break
            pause = min(pause * 2 or HELD_BACK_PAUSE, WAIT_SLICE)
            self._stop.wait(min(pause, deadline - now))
        return sent

    def pending(self) -> int:
        """Rows still pending: not yet sent, or held back."""
        return OutboxMessage.objects.using(self.using).filter(state=_PENDING).count()

    def run(self, stop: threading.Event) -> None:
        """Relay until ``stop`` is set, then return after the batch in hand.

        Woken by ``NOTIFY tasklane_outbox`` on PostgreSQL, by polling otherwise (and as a
        fallback). A broker or database outage is backed off (1 s doubling to 30 s), never fatal.
        """
        self._stop = stop
        backoff = _Backoff()
        listener = _Listener(self.using) if self._postgres else None
        try:
            while not stop.is_set():
                self.health.beat()
                if listener is not None:
                    listener.ensure()  # before the pass: a commit during it still wakes us
                result = self._guarded_pass(backoff)
                if stop.is_set():
                    break
                if self.health.ready()[0]:  # the gauges count on through a broker outage
                    self._maintain()
                if backoff.pause:
                    self._sleep(backoff.pause)
                elif result is None or not result.progressed:
                    held = result is not None and result.held_back
                    self._wait_for_work(listener, held)
        finally:
            if listener is not None:
                listener.close()

    def prune(self) -> int:
        """Delete sent rows older than the retention, in batches; returns the rows deleted."""
        cutoff = timezone.now() - timedelta(seconds=self.retention)
        rows = OutboxMessage.objects.using(self.using)
        deleted = 0
        while not self._stop.is_set():
            ids = list(
                rows.filter(state=_SENT, sent_at__lt=cutoff).values_list("id", flat=True)[
                    :PRUNE_BATCH
                ]
            )
            if ids:
                deleted += rows.filter(id__in=ids, state=_SENT).delete()[0]
            if len(ids) < PRUNE_BATCH:
                break
        return deleted

    def refresh_backlog(self) -> None:
        """Read the pending and parked counts into the backlog gauges."""
        rows = OutboxMessage.objects.using(self.using)
        pending: dict[str, int] = {}
        oldest: datetime | None = None
        for group in (
            rows.filter(state=_PENDING)
            .values("contract")
            .annotate(count=Count("id"), oldest=Min("created_at"))
        ):
            pending[group["contract"]] = group["count"]
            if oldest is None or group["oldest"] < oldest:
                oldest = group["oldest"]
        parked = rows.filter(state=_PARKED).count()
        age = 0.0 if oldest is None else max(0.0, (timezone.now() - oldest).total_seconds())
        self.metrics.backlog(pending, age, parked, known=self._known)

    def _guarded_pass(self, backoff: _Backoff) -> _PassResult | None:
        """One pass, its failure counted, logged and backed off; ``None`` when it failed."""
        try:
            result = self._pass()
        except BrokerUnavailableError as exc:
            self.metrics.error("broker-unavailable")
            logger.warning("broker unavailable, retrying in %.0fs: %s", backoff.failed(), exc)
            return None
        except DatabaseError as exc:
            self.metrics.error("database")
            self.health.database(False, f"outbox database unreachable: {_one_line(exc)}")
            logger.warning("outbox database failed, retrying in %.0fs: %s", backoff.failed(), exc)
            self._drop_connection()
            return None
        backoff.succeeded()
        return result

    def _pass(self) -> _PassResult:
        result = _PassResult()
        for contract in self._pending_contracts():
            if self._stop.is_set():
                break
            self._relay_batch(contract, result)
        self.health.database(True, "outbox database reachable")
        return result

    def _pending_contracts(self) -> list[str]:
        if self._postgres:
            with self._connection.cursor() as cursor:
                cursor.execute(_PENDING_CONTRACTS.format(table=self._table))
                return [contract for (contract,) in cursor.fetchall()]
        pending = OutboxMessage.objects.using(self.using).filter(state=_PENDING)
        return list(pending.values_list("contract", flat=True).distinct().order_by("contract"))

    @property
    def _table(self) -> str:
        return self._connection.ops.quote_name(OutboxMessage._meta.db_table)

    def _relay_batch(self, contract: str, result: _PassResult) -> None:
        """Claim, send and mark one batch of ``contract`` in one transaction."""
        failure: BrokerUnavailableError | None = None
        with transaction.atomic(using=self.using):
            rows = self._claim(contract)
            if not rows:
                result.held_back = True  # pending a moment ago, none claimable now
                return
            messages, parked = self._decode(contract, rows)
            self._park(parked)
            result.parked += len(parked)
            sendable = [row for row in rows if row.id in messages]
            try:
                if sendable:
                    ordered = [messages[row.id] for row in sendable]
                    self.publisher.send(contract, ordered, batch_size=len(ordered))
                taken = len(sendable)
            except BrokerUnavailableError as exc:
                # The first ``exc.sent`` messages were taken: marking them spares a resend.
                failure, taken = exc, exc.sent
            sent_at = timezone.now()
            self._mark_sent(sendable[:taken], sent_at)
            if failure is not None:
                self._record_attempt(sendable[taken:], _one_line(failure))
        lags = [max(0.0, (sent_at - row.created_at).total_seconds()) for row in sendable[:taken]]
        if lags:
            self.metrics.sent_rows(contract, lags)
        result.sent += taken
        if failure is not None:
            raise failure

    def _claim(self, contract: str) -> list[_Row]:
        if not self._postgres:
            # Another database: id order, no locks, one relay (system check tasklane.W001).
            rows = OutboxMessage.objects.using(self.using).filter(state=_PENDING, contract=contract)
            if self._connection.vendor == "sqlite":
                # SQLite fails (rather than waits) a transaction that read and then writes while
                # another writes: it would have sent the batch and could not mark it. A write
                # first makes it wait for the other writer, before anything is sent.
                rows.filter(id=-1).update(attempts=0)
            return [
                _Row(row.id, row.task_id, row.message, row.created_at)
                for row in rows.order_by("id")[: self.batch_size]
            ]
        with self._connection.cursor() as cursor:
            cursor.execute(_CONTRACT_LOCK, [contract])
            (locked,) = cursor.fetchone() or (False,)
            if not locked:
                return []
            cursor.execute(_CLAIM.format(table=self._table), [contract, self.batch_size])
            return [_Row(*row) for row in cursor.fetchall()]

    def _decode(
        self, contract: str, rows: Sequence[_Row]
    ) -> tuple[dict[int, TaskMessage], list[tuple[_Row, str]]]:
        """The sendable messages by row id, and the rows to park with why."""
        if contract not in self.publisher.registry:
            why = f"unknown task contract {contract!r}: not in the relay's registry (REGISTRY)"
            return {}, [(row, why) for row in rows]
        messages: dict[int, TaskMessage] = {}
        parked: list[tuple[_Row, str]] = []
        for row in rows:
            try:
                data = json.loads(row.message) if isinstance(row.message, str) else row.message
                message = TaskMessage.from_json(data)
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                parked.append((row, f"message not readable: {type(exc).__name__}: {exc}"))
                continue
            if message.headers.get("task") != contract:
                task = message.headers.get("task")
                parked.append((row, f"message is for task {task!r}, its row for {contract!r}"))
                continue
            messages[row.id] = message
        return messages, parked

    def _park(self, parked: Sequence[tuple[_Row, str]]) -> None:
        rows = OutboxMessage.objects.using(self.using)
        for row, why in parked:
            logger.error("outbox row %d (task %s) parked: %s", row.id, row.task_id, why)
            rows.filter(id=row.id).update(state=_PARKED, last_error=why)

    def _mark_sent(self, rows: Sequence[_Row], sent_at: datetime) -> None:
        if rows:
            OutboxMessage.objects.using(self.using).filter(id__in=[row.id for row in rows]).update(
                state=_SENT, sent_at=sent_at
            )

    def _record_attempt(self, rows: Sequence[_Row], error: str) -> None:
        if rows:
            OutboxMessage.objects.using(self.using).filter(id__in=[row.id for row in rows]).update(
                attempts=F("attempts") + 1, last_error=error
            )

    def _maintain(self) -> None:
        """Refresh the backlog gauges and prune, each when due; a database error waits."""
        now = time.monotonic()
        try:
            if now >= self._backlog_due:
                self.refresh_backlog()
                took = time.monotonic() - now
                self._backlog_due = now + max(BACKLOG_INTERVAL, 10 * took)
            if self._pruned_at is None or now - self._pruned_at >= PRUNE_INTERVAL:
                self._pruned_at = now
                deleted = self.prune()
                if deleted:
                    logger.info("pruned %d sent outbox rows", deleted)
        except DatabaseError as exc:
            # The next pass meets the same database and backs off; the gauges keep their values.
            logger.warning("outbox upkeep failed: %s", _one_line(exc))
            self._drop_connection()

    def _wait_for_work(self, listener: _Listener | None, held_back: bool) -> None:
        """Wait for a NOTIFY, the poll interval, or (rows held back) a short, growing pause."""
        timeout = self.poll_interval
        if held_back:
            # An earlier transaction blocking the rows may write no row, so no NOTIFY may come.
            self._held_pause = min(self._held_pause * 2 or HELD_BACK_PAUSE, timeout)
            timeout = self._held_pause
        else:
            self._held_pause = 0.0
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.health.beat()
            if listener is not None and listener.wait(min(remaining, WAIT_SLICE)):
                return
            if listener is None or not listener.connected:
                self._stop.wait(min(remaining, WAIT_SLICE))

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
            self.health.beat()
            self._stop.wait(min(remaining, WAIT_SLICE))

    def _drop_connection(self) -> None:
        # A connection that failed mid-transaction cannot be reused; Django opens a new one.
        try:
            self._connection.close()
        except DatabaseError:
            pass


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class _Listener:
    """``LISTEN tasklane_outbox`` on a psycopg 3 connection of its own (autocommit)."""

    def __init__(self, using: str) -> None:
        self.using = using
        self._wrapper: BaseDatabaseWrapper | None = None
        self._raw: Any = None
        self._retry_at = 0.0

    @property
    def connected(self) -> bool:
        return self._raw is not None

    def ensure(self) -> None:
        """Connect and LISTEN unless connected; a failure leaves polling on until a retry."""
        if self._raw is not None or time.monotonic() < self._retry_at:
            return
        try:
            import psycopg
        except ImportError:  # psycopg2: poll only
            self._retry_at = float("inf")
            logger.warning("psycopg 3 is not installed: the relay polls and is not woken by NOTIFY")
            return
        wrapper = connections.create_connection(self.using)
        try:
            wrapper.connect()
            wrapper.set_autocommit(True)
            raw = wrapper.connection
            if not isinstance(raw, psycopg.Connection):
                self._retry_at = float("inf")
                logger.warning("the outbox database is not on psycopg 3: the relay only polls")
                wrapper.close()
                return
            raw.execute(f"LISTEN {CHANNEL}")
        except (DatabaseError, psycopg.Error) as exc:
            self._retry_at = time.monotonic() + FIRST_BACKOFF
            logger.warning("LISTEN %s failed, polling meanwhile: %s", CHANNEL, _one_line(exc))
            with _suppressed():
                wrapper.close()
            return
        self._wrapper, self._raw = wrapper, raw

    def wait(self, timeout: float) -> bool:
        """Whether a notification came within ``timeout`` seconds (all pending are taken)."""
        if self._raw is None:
            return False
        import psycopg

        woken = False
        try:
            for _ in self._raw.notifies(timeout=timeout, stop_after=1):
                woken = True
            if woken:  # take what else came: one pass sends it all
                for _ in self._raw.notifies(timeout=0):
                    pass
        except psycopg.Error as exc:
            logger.warning("LISTEN connection lost, polling meanwhile: %s", _one_line(exc))
            self.close()
            return True  # notifications may have been lost: look now
        return woken

    def close(self) -> None:
        if self._wrapper is not None:
            with _suppressed():
                self._wrapper.close()
        self._wrapper = self._raw = None


@contextmanager
def _suppressed() -> Iterator[None]:
    try:
        yield
    except Exception as exc:  # closing a broken connection: nothing left to do
        logger.debug("closing the LISTEN connection: %s", exc)
