"""``/readyz``: whether Redis and the broker answered in the last check, and whether draining.

Checked every :data:`CHECK_INTERVAL` seconds in the background, so a probe costs no round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tasklane.settings import Settings
from tasklane.wire.broker import connect

logger = logging.getLogger(__name__)

#: Seconds between two checks; also the longest a check may take.
CHECK_INTERVAL = 2.0


@dataclass
class Readiness:
    """What the last check found; ``draining`` is set when SIGTERM arrives."""

    redis: bool = False
    broker: bool = False
    draining: bool = False

    @property
    def ready(self) -> bool:
        """Whether a load balancer should send requests here."""
        return self.redis and self.broker and not self.draining

    def describe(self) -> dict[str, object]:
        """The ``/readyz`` body."""
        status = "draining" if self.draining else ("ready" if self.ready else "unavailable")
        return {"status": status, "redis": self.redis, "broker": self.broker}


class ReadinessChecker:
    """Pings the state Redis (async) and connects to the broker (on a thread of its own)."""

    def __init__(self, settings: Settings, client: Redis, readiness: Readiness) -> None:
        self._settings = settings
        self._client = client
        self.readiness = readiness
        # Its own thread: a broker connect hanging in an outage must not queue publishes.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="gateway-readiness")
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> None:
        """One check of both, each bounded by :data:`CHECK_INTERVAL`."""
        loop = asyncio.get_running_loop()
        broker = loop.run_in_executor(self._pool, self._broker_answers)
        try:
            self.readiness.redis = bool(await asyncio.wait_for(self._client.ping(), CHECK_INTERVAL))
        except (RedisError, OSError, TimeoutError):
            self.readiness.redis = False
        try:
            self.readiness.broker = await asyncio.wait_for(asyncio.shield(broker), CHECK_INTERVAL)
        except TimeoutError:
            self.readiness.broker = False

    def _broker_answers(self) -> bool:
        try:
            with connect(self._settings, socket_timeout=CHECK_INTERVAL) as connection:
                connection.connect()
            return True
        except Exception as exc:  # any failure to connect means not ready; the reason is logged
            logger.warning("broker check failed: %s: %s", type(exc).__name__, exc)
            return False

    def start(self) -> None:
        """Check in the background until :meth:`stop`."""
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            await self.check()

    async def stop(self) -> None:
        """Stop checking and release the thread."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pool.shutdown(wait=False, cancel_futures=True)
