"""Task results stored on Redis in one round trip.

Celery's Redis backend reads a task's stored result before it stores a new one, so that a
message delivered twice (a lost worker, a network partition) cannot overwrite a success with a
later state; then it writes the new one with a ``SET`` and a ``PUBLISH`` for the clients waiting
on it. That is two round trips for every task, and a window between the read and the write in
which another worker's success can still be overwritten. :class:`RedisResults` does the same
check and the same writes in one Lua script: one round trip, and nothing runs between the read
and the write. The stored value, its expiry and the message published are Celery's own.
Measured in docs/performance.md §14.
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str
from redis.commands.core import Script

#: The backends a Tasklane app's ``result_backend`` URL names, by scheme (Celery's aliases).
RESULT_BACKENDS = {
    "redis": "tasklane.wire.results:RedisResults",
    "rediss": "tasklane.wire.results:RedisResults",
    "sentinel": "tasklane.wire.results:SentinelResults",
}

#: KEYS[1]: the result's key; ARGV[1]: the encoded result; ARGV[2]: seconds to keep it (0: for
#: ever). Returns 0 when a success was stored already (nothing written), 1 when written.
STORE_UNLESS_SUCCEEDED = """
local stored = redis.call('GET', KEYS[1])
if stored then
    local ok, meta = pcall(cjson.decode, stored)
    if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
        return 0
    end
end
local seconds = tonumber(ARGV[2])
if seconds > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', seconds)
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class StoreInOneTrip:
    """What :class:`RedisResults` and :class:`SentinelResults` add to Celery's backends."""

    _script: Script | None = None

    def _store_result(
        self,
        task_id: Any,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        backend: Any = self
        meta = backend._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        value = backend.encode(meta)
        # Celery's own limits: Redis refuses a string over 512 MB; a failure may be kept for
        # another time than a success (result_failure_expires).
        if isinstance(value, str) and len(value) > backend._MAX_STR_VALUE_SIZE:
            raise BackendStoreError(
                "value too large for Redis backend", state=state, task_id=task_id
            )
        expires = backend.failure_expires if state == states.FAILURE else backend.expires
        key = backend.get_key_for_task(task_id)
        try:
            backend.ensure(self._store_unless_succeeded, (key, value, expires))
        except BackendStoreError as exc:
            raise BackendStoreError(str(exc), state=state, task_id=task_id) from exc
        return result

    def _store_unless_succeeded(self, key: Any, value: Any, expires: Any) -> bool:
        """Write ``value`` under ``key`` and publish it, unless a success is stored there."""
        client = self.client  # type: ignore[attr-defined]
        if self._script is None:
            self._script = client.register_script(STORE_UNLESS_SUCCEEDED)
        return bool(self._script(keys=[key], args=[value, int(expires or 0)], client=client))


class RedisResults(StoreInOneTrip, RedisBackend):  # type: ignore[misc]
    """Celery's Redis result backend, each result stored in one round trip."""


class SentinelResults(StoreInOneTrip, SentinelBackend):  # type: ignore[misc]
    """Celery's Redis Sentinel result backend, each result stored in one round trip."""
