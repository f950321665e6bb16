"""A 1,000,000-message backlog on Redis: broker memory per message, and the publisher's RSS.

``publish_many`` streams a generator of a million no-op payloads (``bench/noop_service.py``) into
a ``redis-server`` of its own (a free port, no persistence, so its memory holds the backlog and
nothing else), in batches of 1,000. It prints:

* **Broker memory per message** against the message's encoded size: Redis's ``used_memory``
  growth over the run, divided by the messages, against the mean length of what was pushed (the
  envelope, read back with ``LRANGE`` in full). Target ≤ 1.1x.
* **The publisher's RSS** after every 100,000 messages: flat when the RSS after the last is within
  10 MiB of the RSS after the first 100,000 (what ``publish_many`` returns holds no handle and no
  id, only the key they are made from; a list of a million handles would add hundreds of MiB).
* The rate, for the record.

Usage: ``.venv/bin/python bench/backlog.py [--messages N]`` (about a minute for a million).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tasklane_dev.sinks import free_port  # noqa: E402

MIB = 1024 * 1024
FLAT_MIB = 10
MEMORY_TARGET = 1.1


def rss_bytes() -> int:
    """This process's resident set size now (not its peak)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway ``redis-server`` on a free port, keeping nothing on disk."""
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        raise SystemExit("needs redis-server (Debian: redis-server) on PATH")
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--save", "", "--appendonly", "no",
             "--dir", directory, "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            client = redis.Redis(port=port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(10)


def pushed_bytes(client: redis.Redis, keys: Sequence[str]) -> tuple[int, int]:
    """How many items the lists hold and their total length, read back in slices."""
    items = total = 0
    for key in keys:
        length = client.llen(key)
        for start in range(0, length, 20_000):
            chunk = client.lrange(key, start, start + 19_999)
            items += len(chunk)
            total += sum(len(item) for item in chunk)
    return items, total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    count, step = args.messages, max(args.messages // 10, 1)

    with redis_server() as url:
        os.environ["TASKLANE_BROKER_URL"] = url
        os.environ.setdefault("TASKLANE_NAMESPACE", "perf.")
        import noop_service as svc

        from tasklane.publish import Publisher
        from tasklane.wire.broker import redis_queue_keys
        from tasklane.wire.routing import queue_name

        client = redis.Redis.from_url(url)
        rss: list[tuple[int, int]] = []
        sent = 0

        def progress(batch: int) -> None:
            nonlocal sent
            sent += batch
            if sent % step == 0:
                rss.append((sent, rss_bytes()))

        with Publisher(svc.settings, registry=svc.BENCH_REGISTRY) as publisher:
            publisher.publish_many(svc.NOOP, [{"n": -1}])  # connect and declare
            client.delete(*redis_queue_keys(queue_name(svc.NOOP, svc.settings.namespace)))
            before = int(client.info("memory")["used_memory"])
            start = time.perf_counter()
            tasks = publisher.publish_many(
                svc.NOOP, ({"n": n} for n in range(count)), progress=progress
            )
            seconds = time.perf_counter() - start
            after = int(client.info("memory")["used_memory"])
        keys = redis_queue_keys(queue_name(svc.NOOP, svc.settings.namespace))
        items, total = pushed_bytes(client, keys)

    if items != count or len(tasks) != count:
        raise SystemExit(f"sent {len(tasks)}, the broker holds {items}; expected {count}")
    per_message = (after - before) / count
    encoded = total / count
    memory_ratio = per_message / encoded
    growth = (rss[-1][1] - rss[0][1]) / MIB
    print(f"publish_many of {count} payloads from a generator: {count / seconds:.0f} msg/s")
    print(f"returned: {tasks!r} ({len(tasks)} tasks, first id {tasks[0].id})")
    print("publisher RSS after each step: " + ", ".join(f"{n}: {b / MIB:.1f} MiB" for n, b in rss))
    flat = "met" if growth <= FLAT_MIB else "MISSED"
    print(
        f"RSS growth from {rss[0][0]} to {rss[-1][0]} messages: {growth:+.1f} MiB "
        f"(flat: within {FLAT_MIB} MiB: {flat})"
    )
    met = "met" if memory_ratio <= MEMORY_TARGET else "MISSED"
    print(
        f"broker memory per message {per_message:.1f} bytes; encoded message (the envelope "
        f"pushed) {encoded:.1f} bytes; ratio {memory_ratio:.3f}x (target <= {MEMORY_TARGET}x: "
        f"{met})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
