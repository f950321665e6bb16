"""How soon a long-lived Publisher publishes again after its broker comes back.

Per broker, ``TRIALS`` times: a connected Publisher loses its broker (an own ``redis-server``
killed; a TCP proxy in front of the local RabbitMQ cut), a ``publish`` waits through the outage
(``TASKLANE_PUBLISH_TIMEOUT`` = 60 s), the broker returns, and the time from the broker answering
again to that ``publish`` returning is the **recovery**. The baseline, measured right after in the
same trial, is what an upstream that restarts would pay instead: a new Publisher's first publish
to the answering broker (connect, declare, send). For Redis the return is taken when the restarted
server first answered a ping, polled every 50 ms, so a recovery may read up to 50 ms short.
Prints median and maximum of both and the ratio of the medians. Target: recovery under 1 s on
both brokers.

    .venv/bin/python bench/publisher_recovery.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, from a checkout

from tasklane import Publisher  # noqa: E402
from tasklane.contracts.notifier import SEND_EMAIL  # noqa: E402
from tasklane.settings import Settings  # noqa: E402
from tests.support.faults import TcpProxy  # noqa: E402
from tests.support.harness import RABBITMQ_URL, BrokerEnv, RedisServer, cleanup  # noqa: E402

TRIALS = 10
TARGET_SECONDS = 1.0
EMAIL = {"to": ["bench@example.com"], "subject": "recovery", "text": "x"}


def _answers(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=0.5) as client:
            return bool(client.ping())
    except redis.ConnectionError:
        return False


def trial(kind: str, directory: Path) -> tuple[float, float]:
    """One outage: (recovery, baseline) in seconds."""
    namespace = f"bench{uuid.uuid4().hex[:8]}."
    redis_url = "redis://127.0.0.1:6379/0"
    server = proxy = None
    if kind == "redis":
        server = RedisServer(directory).start()
        url = backend = server.url
    else:
        proxy = TcpProxy("127.0.0.1", 5672)
        proxy.restore()
        url, backend = f"amqp://guest:guest@127.0.0.1:{proxy.port}//", redis_url
    settings = Settings(
        broker_url=url, result_backend=backend, namespace=namespace, publish_timeout=60
    )
    try:
        with Publisher(settings) as publisher:
            publisher.publish(SEND_EMAIL, EMAIL)
            if server is not None:
                server.kill()
            else:
                assert proxy is not None
                proxy.cut()
            done = threading.Event()
            finished: list[float] = []

            def waiting_publish() -> None:
                publisher.publish(SEND_EMAIL, EMAIL)
                finished.append(time.perf_counter())
                done.set()

            thread = threading.Thread(target=waiting_publish)
            thread.start()
            time.sleep(1.0)  # the publish is retrying through the outage
            if server is not None:
                server.start()  # returns once the server answers
            else:
                assert proxy is not None
                proxy.restore()  # listening again: the broker answers from here on
            back = time.perf_counter()
            thread.join(60)
            assert done.is_set(), "the waiting publish did not finish"
            recovery = finished[0] - back
        started = time.perf_counter()
        with Publisher(settings) as fresh:
            fresh.publish(SEND_EMAIL, EMAIL)
        baseline = time.perf_counter() - started
    finally:
        if server is not None:
            server.kill()
        if proxy is not None:
            proxy.cut()
            cleanup(BrokerEnv("rabbitmq", RABBITMQ_URL, redis_url, namespace))
    return recovery, baseline


def main() -> None:
    print(f"Publisher recovery after a broker outage, {TRIALS} trials per broker")
    print(f"{'broker':<10} {'recovery median':>16} {'max':>8} {'baseline median':>16} {'ratio':>7}")
    missed = False
    for kind in ("redis", "rabbitmq"):
        with tempfile.TemporaryDirectory() as directory:
            results = [trial(kind, Path(directory)) for _ in range(TRIALS)]
        recovery = [r for r, _ in results]
        baseline = [b for _, b in results]
        ratio = statistics.median(recovery) / statistics.median(baseline)
        print(
            f"{kind:<10} {statistics.median(recovery):>15.3f}s {max(recovery):>7.3f}s "
            f"{statistics.median(baseline):>15.3f}s {ratio:>6.1f}x"
        )
        missed = missed or max(recovery) >= TARGET_SECONDS
    print(f"target: every recovery under {TARGET_SECONDS:g} s -> {'MISSED' if missed else 'met'}")


if __name__ == "__main__":
    main()
