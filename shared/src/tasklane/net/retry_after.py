"""The HTTP ``Retry-After`` header, as the seconds a retry should wait."""

from __future__ import annotations

import math
import time
from email.utils import parsedate_to_datetime


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date), if usable.

    Args:
        value: the header value, or None when absent.
        now: the current POSIX time; ``time.time()`` when None.
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # not an HTTP-date (those say GMT); a zone-less guess would be arbitrary
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
