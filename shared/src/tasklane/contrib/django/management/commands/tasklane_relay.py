"""``manage.py tasklane_relay``: send the transactional outbox's rows to the broker until stopped.

SIGTERM or SIGINT: the batch in hand is sent and marked, then the command exits 0.
"""

from __future__ import annotations

import signal
import threading
from argparse import ArgumentParser, ArgumentTypeError
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from tasklane.contrib.django.conf import options
from tasklane.errors import BrokerUnavailableError


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ArgumentTypeError(f"{value} is not a positive whole number")
    return number


def _seconds(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise ArgumentTypeError(f"{value} is not a number of seconds (0 or more)")
    return number


#: ``--once``'s default wait for rows held back: long enough for a web request's transaction.
ONCE_HELD_WAIT = 10.0


class Command(BaseCommand):
    """The outbox relay as a management command."""

    help = (
        "Send the rows publish_on_commit wrote to the outbox (TASKLANE['OUTBOX']) to the broker, "
        "in commit order, until SIGTERM. Serves /metrics, /livez and /readyz when a metrics port "
        "is set."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--once",
            action="store_true",
            help="Send what can be sent now, then exit (non-zero if the broker is unavailable).",
        )
        parser.add_argument(
            "--wait",
            type=_seconds,
            default=ONCE_HELD_WAIT,
            metavar="SECONDS",
            help=(
                "With --once: how long to wait for rows held back by a transaction still open "
                f"on the database server (default: {ONCE_HELD_WAIT:g})."
            ),
        )
        parser.add_argument(
            "--batch-size",
            type=_positive,
            default=None,
            help="Rows claimed, sent and marked per transaction (default: RELAY_BATCH_SIZE).",
        )
        parser.add_argument(
            "--metrics-port",
            type=_positive,
            default=None,
            help="Serve metrics and probes on this port (default: RELAY_METRICS_PORT).",
        )

    def handle(self, *args: Any, **arguments: Any) -> None:
        from tasklane.contrib.django.relay import Relay
        from tasklane.contrib.django.relay_metrics import process_metrics

        if arguments["once"]:
            relay = Relay(batch_size=arguments["batch_size"])
            try:
                sent = relay.drain(held_wait=arguments["wait"])
                pending = relay.pending()
            except (BrokerUnavailableError, DatabaseError) as exc:
                raise CommandError(f"outbox rows not sent: {exc}") from exc
            self.stdout.write(
                f"{sent} outbox rows sent"
                + (
                    f"; {pending} still pending (held back by a transaction still open on the "
                    "database server, or written since)"
                    if pending
                    else ""
                )
            )
            return
        relay = Relay(batch_size=arguments["batch_size"], metrics=process_metrics())
        port = arguments["metrics_port"] or options().relay_metrics_port
        if port is not None:
            from tasklane.observability.metrics import serve_endpoints

            serve_endpoints(port, relay.metrics.registry, relay.health)
        stop = threading.Event()

        def request_stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, request_stop)
        self.stdout.write(
            f"relaying outbox rows of database {relay.using!r}"
            + (f"; metrics on :{port}" if port is not None else "")
        )
        self.stdout.flush()
        relay.run(stop)
        self.stdout.write("relay stopped")
