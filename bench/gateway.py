"""The HTTP gateway's request rate, batch rate and latency, against publishing from Python.

One ``tasklane gateway`` process (uvicorn, uvloop, httptools) on a free port publishes
``notifier.email.send`` to Redis (``bench/run.py``'s broker); the load comes from this process:
plain HTTP/1.1 over keep-alive connections on asyncio, requests prepared once, so the client
costs little next to the server. Measured, each for ``--seconds``:

* **single**: ``POST /v1/tasks/notifier.email.send``, one email each, ``--connections``
  connections each sending its next request as its answer arrives: answers 202 per second.
  Baseline: ``Publisher.publish`` in a loop in this process (what a Python upstream gets).
* **batch**: ``POST /v1/tasks/notifier.email.send/batch`` of ``--batch`` emails each, four
  connections: tasks accepted per second. Baseline: ``Publisher.publish_many`` of the same size.
* **latency**: requests started at a fixed rate (``--rate``, 500 a second) on a pool of
  connections, each answer's latency taken from the moment its request was due (so a stalled
  server is not hidden by a stalled client): p50, p99, max.

The gateway's rate limit is set out of the way (one publisher, a bucket far above the load), and
the queue is emptied between runs. Targets: single >= 1,500 req/s, batch >= 20,000 tasks/s, p99
<= 20 ms at 500 req/s.

    .venv/bin/python bench/gateway.py [--seconds 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from run import broker  # noqa: E402  (the same broker choice as the other benchmarks)

TASK = "notifier.email.send"
EMAIL = {"to": ["bench@example.com"], "subject": "Gateway bench", "text": "hello"}
TARGET_SINGLE = 1_500.0
TARGET_BATCH = 20_000.0
TARGET_P99 = 0.020


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- the gateway


@dataclass
class Gateway:
    port: int
    token: str
    process: subprocess.Popen[bytes]
    namespace: str


@contextmanager
def gateway(broker_url: str, workdir: Path) -> Iterator[Gateway]:
    token = secrets.token_urlsafe(32)
    tokens = workdir / "tokens.json"
    tokens.write_text(
        json.dumps(
            {
                "publishers": [
                    {
                        "name": "bench",
                        "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
                        "contracts": ["*"],
                        "rate": 10_000_000,
                        "burst": 10_000_000,
                    }
                ]
            }
        )
    )
    port = free_port()
    namespace = f"gwbench{uuid.uuid4().hex[:8]}."
    env = {
        **os.environ,
        "TASKLANE_BROKER_URL": broker_url,
        "TASKLANE_RESULT_BACKEND": broker_url,
        "TASKLANE_NAMESPACE": namespace,
        "TASKLANE_GATEWAY_HOST": "127.0.0.1",
        "TASKLANE_GATEWAY_PORT": str(port),
        "TASKLANE_GATEWAY_TOKENS_FILE": str(tokens),
        "TASKLANE_GATEWAY_SHUTDOWN_DELAY": "0",
        "TASKLANE_LOG_LEVEL": "WARNING",
    }
    command = [str(Path(sys.executable).with_name("tasklane")), "gateway"]
    log = (workdir / "gateway.log").open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the gateway exited:\n{(workdir / 'gateway.log').read_text()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the gateway was not ready within 60 s")
            time.sleep(0.1)
        yield Gateway(port, token, process, namespace)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def empty_queue(client: redis.Redis, namespace: str) -> None:
    keys = list(client.scan_iter(f"{namespace}*", count=1000))
    if keys:
        client.unlink(*keys)


# --------------------------------------------------------------------------- the HTTP client


def request_bytes(port: int, path: str, token: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """Send one request on a kept-alive connection; the answer's status code."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def closed_loop(port: int, request: bytes, connections: int, seconds: float) -> int:
    """Answers 202 within ``seconds``, each connection sending again as soon as answered."""
    accepted = 0
    statuses: dict[int, int] = {}
    stop = time.monotonic() + seconds

    async def one() -> None:
        nonlocal accepted
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < stop:
                status = await exchange(reader, writer, request)
                statuses[status] = statuses.get(status, 0) + 1
                accepted += status == 202
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    if set(statuses) != {202}:
        raise SystemExit(f"answers other than 202: {statuses}")
    return accepted


async def fixed_rate(port: int, request: bytes, rate: float, seconds: float) -> list[float]:
    """Latency of each request, from when it was due, at ``rate`` requests a second."""
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(64):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []
    failures: dict[int, int] = {}

    async def send(due: float) -> None:
        connection = await pool.get()
        try:
            status = await exchange(*connection, request)
        finally:
            pool.put_nowait(connection)
        latencies.append(time.monotonic() - due)
        if status != 202:
            failures[status] = failures.get(status, 0) + 1

    start = time.monotonic() + 0.1
    total = int(rate * seconds)
    tasks = []
    for index in range(total):
        due = start + index / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(due)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait()[1].close()
    if failures:
        raise SystemExit(f"answers other than 202: {failures}")
    return latencies


# --------------------------------------------------------------------------- baselines


def publisher_rate(broker_url: str, namespace: str, seconds: float, batch: int | None) -> float:
    """Tasks per second from ``Publisher.publish`` (or ``publish_many`` of ``batch``)."""
    from tasklane import Publisher
    from tasklane.settings import Settings

    settings = Settings(broker_url=broker_url, result_backend=broker_url, namespace=namespace)
    with Publisher(settings) as publisher:
        publisher.publish(TASK, EMAIL)  # connect and declare outside the clock
        sent = 0
        stop = time.monotonic() + seconds
        began = time.monotonic()
        while time.monotonic() < stop:
            if batch is None:
                publisher.publish(TASK, EMAIL)
                sent += 1
            else:
                publisher.publish_many(TASK, [EMAIL] * batch)
                sent += batch
        return sent / (time.monotonic() - began)


# --------------------------------------------------------------------------- the run


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def row(name: str, value: float, baseline: float | None, target: str, met: bool | None) -> str:
    ratio = f"{value / baseline:8.2f}x" if baseline else " " * 9
    verdict = "" if met is None else ("met" if met else "MISSED")
    base = f"{baseline:12,.0f}" if baseline is not None else " " * 12
    return f"{name:34} {value:12,.1f} {base} {ratio} {target:>12}  {verdict}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, help="seconds per measurement (10)")
    parser.add_argument("--quick", action="store_true", help="3 s per measurement")
    parser.add_argument("--connections", type=int, default=32, help="single POST (32)")
    parser.add_argument("--batch", type=int, default=1000, help="payloads per batch (1000)")
    parser.add_argument("--rate", type=float, default=500.0, help="latency run (500/s)")
    parser.add_argument("--broker", help="Redis URL (default as bench/run.py)")
    parser.add_argument("--json", type=Path, dest="json_path", help="also write figures here")
    args = parser.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # the client's loop only; the gateway picks its own
        pass

    with broker(args.broker) as broker_url, tempfile.TemporaryDirectory() as tmp:
        client = redis.Redis.from_url(broker_url)
        baseline_ns = f"gwbase{uuid.uuid4().hex[:8]}."
        try:
            single_base = publisher_rate(broker_url, baseline_ns, seconds, None)
            empty_queue(client, baseline_ns)
            batch_base = publisher_rate(broker_url, baseline_ns, seconds, args.batch)
        finally:
            empty_queue(client, baseline_ns)
        with gateway(broker_url, Path(tmp)) as gw:
            try:
                single_request = request_bytes(
                    gw.port, f"/v1/tasks/{TASK}", gw.token, json.dumps(EMAIL).encode()
                )
                asyncio.run(closed_loop(gw.port, single_request, 4, 1.0))  # warm up
                empty_queue(client, gw.namespace)
                accepted = asyncio.run(
                    closed_loop(gw.port, single_request, args.connections, seconds)
                )
                single = accepted / seconds
                empty_queue(client, gw.namespace)

                batch_body = json.dumps({"payloads": [EMAIL] * args.batch}).encode()
                batch_request = request_bytes(
                    gw.port, f"/v1/tasks/{TASK}/batch", gw.token, batch_body
                )
                batches = asyncio.run(closed_loop(gw.port, batch_request, 4, seconds))
                batch = batches * args.batch / seconds
                empty_queue(client, gw.namespace)

                latencies = asyncio.run(fixed_rate(gw.port, single_request, args.rate, seconds))
            finally:
                empty_queue(client, gw.namespace)

    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    print(f"Gateway: one process, {TASK}, {seconds:g} s per figure; load {os.getloadavg()[0]:.1f}")
    print(f"{'figure':34} {'gateway':>12} {'baseline':>12} {'ratio':>9} {'target':>12}")
    print(row("single POST, req/s", single, single_base, ">= 1,500", single >= TARGET_SINGLE))
    print(row(f"batch of {args.batch}, tasks/s", batch, batch_base, ">= 20,000",
              batch >= TARGET_BATCH))  # fmt: skip
    print(row(f"latency p50 at {args.rate:g}/s, ms", p50 * 1000, None, "", None))
    print(row(f"latency p99 at {args.rate:g}/s, ms", p99 * 1000, None, "<= 20", p99 <= TARGET_P99))
    print(row("latency max, ms", max(latencies) * 1000, None, "", None))
    print("baselines: Publisher.publish and Publisher.publish_many in this process, same broker")
    if args.json_path:
        args.json_path.write_text(
            json.dumps(
                {
                    "single_rps": single,
                    "single_baseline": single_base,
                    "batch_tps": batch,
                    "batch_baseline": batch_base,
                    "latency_p50": p50,
                    "latency_p99": p99,
                    "latency_max": max(latencies),
                    "latency_mean": statistics.fmean(latencies),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
