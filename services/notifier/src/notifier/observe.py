"""The notifier's own metric: deliveries by channel and outcome.

Beside the platform's per-task metrics (``tasklane.observability.metrics``). Labels come from fixed
sets: the
channel (``email``, ``dingtalk``, ``slack``, ``webhook``) and the outcome: ``delivered``,
``transient`` (the attempt failed and is retried), ``refused`` (permanent: the server or the
message said no) and ``failed`` (anything else).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tasklane.errors import PermanentError, TransientError
from tasklane.observability.metrics import service_counter


def _delivery(channel: str, outcome: str) -> None:
    service_counter(
        "tasklane_notifier_deliveries",
        "Delivery attempts, by channel and outcome.",
        ("channel", "outcome"),
    ).labels(channel, outcome).inc()


@contextmanager
def delivery(channel: str) -> Iterator[None]:
    """Count one delivery attempt on ``channel`` by how it ended."""
    try:
        yield
    except TransientError:
        _delivery(channel, "transient")
        raise
    except PermanentError:
        _delivery(channel, "refused")
        raise
    except BaseException:
        _delivery(channel, "failed")
        raise
    _delivery(channel, "delivered")
