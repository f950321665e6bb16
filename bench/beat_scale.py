"""Beat with 10,000 schedule entries: tick cost, memory, firing lateness, runtime-change pick-up.

Each configuration runs in a child process of its own (so its memory is its own): the entries are
stored through the schedule store (a seeded mix: intervals of 5 s to 1 h, crontabs in six time
zones, clocked one-offs inside the run), then the scheduler ticks as ``celery beat``'s loop ticks
it (tick, sleep what it asked) for ``--seconds`` against a real Redis broker. Measured:

* **tick**: CPU (``time.process_time``), wall time and Redis round trips of every ``tick()``
  after the first (the first loads everything; shown apart), per tick and per slot fired; and
  of ticks that fired nothing, from a run of back-to-back ticks at the end;
* **memory**: RSS at the end, and its growth from before the scheduler was made;
* **lateness**: for every message Beat put on the queues, ``x-tasklane-published-at`` minus
  ``x-tasklane-slot`` (slots from the end of the first tick on: older ones were missed while no
  Beat ran); also slots fired twice and slots due in the window but never fired;
* **change pick-up**: an ``add``, an ``edit`` and a ``disable`` through ``Schedules`` while Beat
  sleeps; how many ticks began before the scheduler had the change in memory, and the seconds from
  the call returning to the end of that tick.

The baseline is the same run with ``--baseline-entries`` (100) of the same mix; each figure is
printed with its ratio to the baseline and against the target (tick <= 50 ms, lateness p99 <= 1 s,
a change live within one tick).

    .venv/bin/python bench/beat_scale.py [--entries 10000] [--seconds 90] [--quick]
    .venv/bin/python bench/beat_scale.py --scheduler mymodule:OtherScheduler   # compare another

``--scheduler`` measures another scheduler class, e.g. an earlier release's (``git show
<commit>:shared/src/tasklane/beat/scheduler.py > /tmp/old/old_scheduler.py``, then
``PYTHONPATH=/tmp/old ... --scheduler old_scheduler:TasklaneScheduler``). See
docs/performance.md, section 12.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from run import broker  # noqa: E402  (the same broker choice as the other benchmarks)

DEFAULT_SCHEDULER = "tasklane.beat.scheduler:TasklaneScheduler"
TARGET_TICK = 0.050
TARGET_LATENESS_P99 = 1.0
TARGET_PICKUP_TICKS = 1
#: The back-to-back ticks measured at the end for the cost of a tick that fires nothing.
IDLE_TICKS = 30
IDLE_SECONDS = 15.0
QUEUES = ("notifier.im", "notifier.email")
TIME_ZONES = (
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Adelaide",
)
INTERVALS = (5, 10, 15, 30, 60, 120, 300, 900, 3600)
IM = {"channel": "webhook", "url": "https://hooks.example.org/beat", "text": "tick"}
EMAIL = {"to": ["ops@example.org"], "subject": "Digest", "text": "scheduled"}


# --------------------------------------------------------------------------- the entry mix


def crontab_fields(rng: random.Random) -> dict[str, str]:
    """Minute fields as people write them: most at one minute of the hour, some every few."""
    roll = rng.random()
    if roll < 0.05:
        return {"minute": "*"}
    if roll < 0.20:
        return {"minute": f"{rng.randrange(5)}-59/5"}
    if roll < 0.30:
        return {"minute": f"{rng.randrange(15)}-59/15"}
    if roll < 0.85:
        return {"minute": str(rng.randrange(60))}
    return {"minute": str(rng.randrange(60)), "hour": str(rng.randrange(24))}


def make_entries(count: int, seconds: float, seed: int = 16) -> list[Any]:
    """``count`` entries: 45 % intervals, 45 % crontabs, 10 % clocked inside the run."""
    from tasklane.beat.models import (
        ClockedSchedule,
        CrontabSchedule,
        IntervalSchedule,
        ScheduleEntry,
    )

    rng = random.Random(seed)
    now = datetime.now(UTC)
    entries = []
    for i in range(count):
        task, payload = ("notifier.im.send", IM) if i % 3 else ("notifier.email.send", EMAIL)
        kind = i % 20
        schedule: Any
        start = None
        if kind < 9:
            every = INTERVALS[rng.randrange(len(INTERVALS))]
            schedule = IntervalSchedule(every=every)
            start = now + timedelta(seconds=rng.uniform(0, every))
        elif kind < 18:
            schedule = CrontabSchedule(**crontab_fields(rng), timezone=rng.choice(TIME_ZONES))
        else:
            # After the fill and the first load (up to a quarter of the run), before its end.
            at = now + timedelta(seconds=rng.uniform(seconds * 0.25, seconds * 0.9) + 30)
            schedule = ClockedSchedule(at=at)
        entries.append(
            ScheduleEntry(
                name=f"e{i:05d}", task=task, payload=payload, schedule=schedule, start_at=start
            )
        )
    return entries


# --------------------------------------------------------------------------- one configuration


@dataclass
class Change:
    """A runtime change made while Beat sleeps, and when the scheduler had it."""

    what: str
    name: str
    at_fraction: float
    live: Callable[[Mapping[str, Any]], bool]
    done_at: float | None = None
    ticks: int = 0
    seconds: float | None = None


@dataclass
class TickLog:
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    fired: list[int] = field(default_factory=list)
    trips: list[int] = field(default_factory=list)


class RoundTrips:
    """Counts Redis round trips of this process (redis-py and Kombu's Redis transport alike)."""

    def __init__(self) -> None:
        self.count = 0
        original: Callable[..., None] = redis.connection.AbstractConnection.send_packed_command

        def counted(conn: Any, command: Any, check_health: bool = True) -> None:
            self.count += 1
            original(conn, command, check_health)

        redis.connection.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def known_entries(scheduler: Any) -> Mapping[str, Any]:
    """The entries the scheduler holds in memory, by name (its ``entries``, or the old list)."""
    entries = getattr(scheduler, "entries", None)
    if isinstance(entries, Mapping):
        return entries
    return {entry.name: entry for entry in scheduler._entries}


def load_class(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Run one configuration in this process; its figures."""
    namespace = f"perfbeat{uuid.uuid4().hex[:8]}."
    os.environ.update(
        TASKLANE_BROKER_URL=args.broker,
        TASKLANE_RESULT_BACKEND=args.broker,
        TASKLANE_NAMESPACE=namespace,
    )
    from tasklane.beat.client import Schedules
    from tasklane.beat.models import IntervalSchedule
    from tasklane.beat.scheduler import create_beat_app
    from tasklane.settings import load_settings

    settings = load_settings()
    client = redis.Redis.from_url(args.broker)
    try:
        with Schedules(settings) as schedules:
            entries = make_entries(args.entries, args.seconds)
            started = time.perf_counter()
            for entry in entries:
                # The store itself (validation, one pipeline): Schedules.add also works out the
                # entry's view and audit record for its caller, which the fill does not need.
                schedules.store.add(entry)
            fill_seconds = time.perf_counter() - started
            interval_names = [
                e.name
                for e in entries
                if isinstance(e.schedule, IntervalSchedule) and e.task == "notifier.im.send"
            ]
            edited, disabled = interval_names[0], interval_names[1]
            changes = [
                Change("add", "added", 0.3, lambda known: "added" in known),
                Change(
                    "edit",
                    edited,
                    0.5,
                    lambda known: known[edited].payload.get("text") == "edited",
                ),
                Change("disable", disabled, 0.7, lambda known: not known[disabled].enabled),
            ]
            trips = RoundTrips()
            rss_before = rss_bytes()
            scheduler = load_class(args.scheduler)(app=create_beat_app(settings))
            figures = drive(scheduler, schedules, changes, trips, args.seconds)
            figures["rss_end"] = rss_bytes()
            figures["rss_growth"] = figures["rss_end"] - rss_before
            figures["fill_seconds"] = fill_seconds
            ended = datetime.now(UTC)
            scheduler.close()
            figures.update(
                firings(client, namespace, entries, figures.pop("ready_at"), ended, changes)
            )
            figures["changes"] = [
                {"what": c.what, "ticks": c.ticks, "seconds": c.seconds} for c in changes
            ]
            figures["entries"] = args.entries
            return figures
    finally:
        keys = list(client.scan_iter(f"{namespace}*", count=5000))
        keys += list(client.scan_iter(f"_kombu.binding*{namespace}*", count=5000))
        for start in range(0, len(keys), 5000):
            client.unlink(*keys[start : start + 5000])


def apply(change: Change, schedules: Any) -> None:
    from tasklane.beat.models import IntervalSchedule, ScheduleEntry

    if change.what == "add":
        schedules.add(
            ScheduleEntry(
                name="added", task="notifier.im.send", payload=IM,
                schedule=IntervalSchedule(every=5),
            )
        )  # fmt: skip
    elif change.what == "edit":
        edit = getattr(schedules, "edit", None)
        if edit is not None:
            edit(change.name, {"payload": {**IM, "text": "edited"}})
        else:  # before the edit API: a replace
            entry = schedules.show(change.name).entry
            updated = entry.model_copy(update={"payload": {**IM, "text": "edited"}})
            schedules.add(updated, replace=True)
    else:
        schedules.disable(change.name)


def drive(
    scheduler: Any, schedules: Any, changes: list[Change], trips: RoundTrips, seconds: float
) -> dict[str, Any]:
    """Tick as ``celery beat`` does for ``seconds``, making ``changes`` between ticks."""
    published = {"count": 0}
    publisher = scheduler.publisher
    for method in ("publish", "send"):
        original = getattr(publisher, method)

        def counted(*a: Any, _original: Any = original, **kw: Any) -> Any:
            published["count"] += 1 if not a or not isinstance(a[-1], list) else len(a[-1])
            return _original(*a, **kw)

        setattr(publisher, method, counted)
    log = TickLog()
    cpu, wall = time.process_time(), time.perf_counter()
    interval = scheduler.tick()  # loads everything
    first = {"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}
    ready_at = datetime.now(UTC)
    start = time.monotonic()
    pending = sorted(changes, key=lambda c: c.at_fraction)
    while time.monotonic() - start < seconds:
        wake = time.monotonic() + max(0.0, interval)
        for change in pending:
            if change.done_at is None and start + change.at_fraction * seconds <= wake:
                # The change lands while Beat sleeps, as one from the CLI or the API would.
                time.sleep(max(0.0, start + change.at_fraction * seconds - time.monotonic()))
                apply(change, schedules)
                change.done_at = time.monotonic()
        time.sleep(max(0.0, wake - time.monotonic()))
        published["count"] = 0
        before_trips = trips.count
        cpu, wall = time.process_time(), time.perf_counter()
        interval = scheduler.tick()
        log.cpu.append(time.process_time() - cpu)
        log.wall.append(time.perf_counter() - wall)
        log.fired.append(published["count"])
        log.trips.append(trips.count - before_trips)
        known = known_entries(scheduler)
        for change in pending:
            if change.done_at is not None and change.seconds is None:
                change.ticks += 1
                if change.live(known):
                    change.seconds = time.monotonic() - change.done_at
    # Back to back, most ticks find nothing due: what a tick costs that fires nothing.
    idle: list[float] = []
    idle_trips: list[float] = []
    until = time.monotonic() + IDLE_SECONDS
    while len(idle) < IDLE_TICKS and time.monotonic() < until:
        published["count"] = 0
        before_trips = trips.count
        cpu = time.process_time()
        scheduler.tick()
        if published["count"] == 0:
            idle.append(time.process_time() - cpu)
            idle_trips.append(trips.count - before_trips)
    return {
        "per_firing": per_firing(log),
        "first_tick": first,
        "ticks": len(log.cpu),
        "tick_cpu": summary(log.cpu),
        "tick_wall": summary(log.wall),
        "idle_tick_cpu": summary(idle),
        "idle_tick_trips": summary(idle_trips),
        "tick_trips": summary([float(t) for t in log.trips]),
        "max_fired_in_a_tick": max(log.fired, default=0),
        "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "ready_at": ready_at,
    }


def firings(
    client: redis.Redis,
    namespace: str,
    entries: list[Any],
    ready_at: datetime,
    ended: datetime,
    changes: list[Change],
) -> dict[str, Any]:
    """Lateness, duplicates and misses of what Beat published between ``ready_at`` and the end."""
    from tasklane.beat.models import EntryState, next_slot
    from tasklane.wire.broker import redis_queue_keys
    from tasklane.wire.headers import PUBLISHED_AT, SCHEDULE, SLOT

    seen: dict[tuple[str, str], int] = {}
    lateness = []
    per_second: dict[int, int] = {}
    for queue in QUEUES:
        for key in redis_queue_keys(f"{namespace}{queue}"):
            for raw in client.lrange(key, 0, -1):
                headers = json.loads(raw)["headers"]
                slot = datetime.fromisoformat(headers[SLOT])
                pair = (headers[SCHEDULE], headers[SLOT])
                seen[pair] = seen.get(pair, 0) + 1
                if slot >= ready_at:
                    lateness.append(float(headers[PUBLISHED_AT]) - slot.timestamp())
                    if os.environ.get("BEAT_SCALE_DEBUG") and lateness[-1] > 1:
                        print("late", pair, lateness[-1], file=sys.stderr)
                    per_second[int(slot.timestamp())] = per_second.get(int(slot.timestamp()), 0) + 1
    # Slots owed between the first tick's end and a second before the end (the last may be firing).
    changed = {c.name for c in changes}
    owed = 0
    fired_owed = 0
    window_end = ended - timedelta(seconds=1)
    for entry in entries:
        if entry.name in changed:
            continue
        moment = ready_at
        state = EntryState()
        made = entry.model_copy(update={"created_at": entry.start_at or ready_at})
        while True:
            upcoming = next_slot(made, state, moment)
            if upcoming is None or upcoming > window_end:
                break
            slot = upcoming
            if slot >= ready_at:
                owed += 1
                fired_owed += (entry.name, slot.isoformat()) in seen
            state = EntryState(last_slot=slot, total_run_count=state.total_run_count + 1)
            moment = slot
    lateness.sort()
    return {
        "fired": sum(seen.values()),
        "fired_twice": sum(1 for n in seen.values() if n > 1),
        "owed": owed,
        "never_fired": owed - fired_owed,
        "lateness": summary(lateness),
        "burst": max(per_second.values(), default=0),
    }


def per_firing(log: TickLog) -> dict[str, float]:
    """CPU, wall time and Redis round trips of the ticks, over the slots they fired."""
    fired = sum(log.fired)
    if not fired:
        return {"n": 0, "cpu": 0.0, "wall": 0.0, "trips": 0.0}
    return {
        "n": fired,
        "cpu": sum(log.cpu) / fired,
        "wall": sum(log.wall) / fired,
        "trips": sum(log.trips) / fired,
    }


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max": ordered[-1],
    }


# --------------------------------------------------------------------------- the runner


def run_child(args: argparse.Namespace, entries: int, broker_url: str) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--child", "--entries", str(entries),
        "--seconds", str(args.seconds), "--broker", broker_url, "--scheduler", args.scheduler,
    ]  # fmt: skip
    print(f"  {entries} entries: running {args.seconds:g} s ...", file=sys.stderr, flush=True)
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the {entries}-entry run failed:\n{out.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def report(big: dict[str, Any], base: dict[str, Any]) -> None:
    rows: list[tuple[str, float, float, str, float | None, Callable[[float], str]]] = []

    def ms(value: float) -> str:
        return f"{value * 1000:.2f} ms"

    def sec(value: float) -> str:
        return f"{value:.3f} s"

    def mib(value: float) -> str:
        return f"{value / 2**20:.1f} MiB"

    def num(value: float) -> str:
        return f"{value:.3g}"

    def row(
        name: str, path: tuple[str, ...], fmt: Callable[[float], str], target: float | None = None
    ) -> None:
        def pick(figures: dict[str, Any]) -> float:
            value: Any = figures
            for part in path:
                if isinstance(value, dict) and value.get("n") == 0:
                    return math.nan  # nothing measured (e.g. no tick fired nothing)
                value = value[part]
            return float(value)

        rows.append((name, pick(big), pick(base), "", target, fmt))

    row("first tick (loads all), CPU", ("first_tick", "cpu"), ms)
    row("tick CPU p50", ("tick_cpu", "p50"), ms, TARGET_TICK)
    row("tick CPU p99", ("tick_cpu", "p99"), ms, TARGET_TICK)
    row("tick CPU max", ("tick_cpu", "max"), ms)
    row("tick wall p99", ("tick_wall", "p99"), ms, TARGET_TICK)
    row("idle tick CPU p50", ("idle_tick_cpu", "p50"), ms, TARGET_TICK)
    row("Redis round trips per idle tick p50", ("idle_tick_trips", "p50"), num)
    row("Redis round trips per tick p50", ("tick_trips", "p50"), num)
    row("tick CPU per slot fired", ("per_firing", "cpu"), ms)
    row("tick wall time per slot fired", ("per_firing", "wall"), ms)
    row("Redis round trips per slot fired", ("per_firing", "trips"), num)
    row("RSS at the end", ("rss_end",), mib)
    row("RSS growth from before the scheduler", ("rss_growth",), mib)
    row("lateness p50", ("lateness", "p50"), sec, TARGET_LATENESS_P99)
    row("lateness p99", ("lateness", "p99"), sec, TARGET_LATENESS_P99)
    row("lateness max", ("lateness", "max"), sec)
    print(
        f"Beat at scale: {big['entries']} entries against a baseline of {base['entries']} "
        f"(same mix); {big['ticks']} / {base['ticks']} ticks"
    )
    header = f"{'figure':<40} {big['entries']:>12} {base['entries']:>12} {'ratio':>9}"
    print(f"{header} {'target':>10}  result")
    for name, value, baseline, _, target, fmt in rows:
        ratio = f"{value / baseline:.2f}x" if baseline and not math.isnan(value) else "-"
        verdict = (
            "" if target is None or math.isnan(value) else ("met" if value <= target else "MISSED")
        )
        shown_target = "" if target is None else fmt(target)
        shown, shown_base = (("n/a" if math.isnan(v) else fmt(v)) for v in (value, baseline))
        print(f"{name:<40} {shown:>12} {shown_base:>12} {ratio:>9} {shown_target:>10}  "
              f"{verdict}")  # fmt: skip
    for figures in (big, base):
        print(
            f"{figures['entries']} entries: fired {figures['fired']} (slots owed in the window "
            f"{figures['owed']}, never fired {figures['never_fired']}, fired twice "
            f"{figures['fired_twice']}); most slots in one second {figures['burst']}, most "
            f"firings in one tick {figures['max_fired_in_a_tick']}; "
            f"fill {figures['fill_seconds']:.1f} s"
        )
    print("runtime changes (ticks begun after the call until the scheduler had it; seconds):")
    for mine, theirs in zip(big["changes"], base["changes"], strict=True):
        seconds = mine["seconds"]
        shown = "never" if seconds is None else f"{seconds:.3f} s"
        base_seconds = theirs["seconds"]
        ratio = f"{seconds / base_seconds:.2f}x" if seconds and base_seconds else "-"
        verdict = "met" if mine["ticks"] <= TARGET_PICKUP_TICKS and seconds else "MISSED"
        print(
            f"  {mine['what']:<8} {mine['ticks']} tick(s), {shown} "
            f"(baseline {theirs['ticks']} tick(s), {base_seconds or 0:.3f} s, {ratio}); "
            f"target {TARGET_PICKUP_TICKS} tick: {verdict}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000, help="entries (10000)")
    parser.add_argument("--baseline-entries", type=int, default=100, help="baseline's (100)")
    parser.add_argument("--seconds", type=float, help="seconds each configuration ticks (90)")
    parser.add_argument("--quick", action="store_true", help="40 s runs")
    parser.add_argument("--broker", help="Redis URL (default as bench/run.py)")
    parser.add_argument("--scheduler", default=DEFAULT_SCHEDULER, help="module:Class to measure")
    parser.add_argument("--json", type=Path, dest="json_path", help="also write figures here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.seconds = args.seconds or (40.0 if args.quick else 90.0)
    if args.child:
        print(json.dumps(child(args), default=str))
        return
    with broker(args.broker) as url:
        base = run_child(args, args.baseline_entries, url)
        big = run_child(args, args.entries, url)
    report(big, base)
    if args.json_path:
        args.json_path.write_text(json.dumps({"entries": big, "baseline": base}, indent=2))


if __name__ == "__main__":
    main()
