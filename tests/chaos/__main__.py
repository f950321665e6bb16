"""``python -m tests.chaos``: run the fault scenarios and print the Markdown table.

Progress goes to stderr, the table (with the command and the date) to stdout and, with
``--output``, to a file. Exit status 1 when a task was lost, a duplicate had differing
Message-IDs or a scenario failed to run.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos.harness import (
    BROKERS,
    SCENARIOS,
    Config,
    Report,
    available_scenarios,
    markdown,
    run_all,
    scrub_environment,
    table_row,
)


def _names(value: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what}: {', '.join(unknown) or value!r}; known: {', '.join(known)}"
        )
    return names


def parse(argv: list[str]) -> argparse.Namespace:
    defaults = Config()
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos",
        description="Fault scenarios on real notifier workers; every email counted at an "
        "independent SMTP sink. Prints a Markdown table.",
    )
    parser.add_argument("--n", type=int, default=defaults.n, help="emails per scenario run")
    parser.add_argument("--kills", type=int, default=defaults.kills, help="kill -9 per kill9 run")
    parser.add_argument(
        "--brokers",
        type=lambda v: _names(v, BROKERS, "brokers"),
        default=list(BROKERS),
        help=f"comma-separated, of {','.join(BROKERS)}",
    )
    parser.add_argument(
        "--scenarios",
        type=lambda v: _names(v, list(SCENARIOS), "scenarios"),
        default=None,
        help=f"comma-separated, of {','.join(SCENARIOS)} (default: all; netns-cut and "
        "netns-silent where 'ip netns' works)",
    )
    parser.add_argument(
        "--outage", type=float, default=defaults.outage, help="seconds each outage lasts"
    )
    parser.add_argument(
        "--publish-timeout",
        type=float,
        default=defaults.publish_timeout,
        help="the Publisher's TASKLANE_PUBLISH_TIMEOUT",
    )
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument(
        "--jobs", type=int, default=1, help="scenario runs at once (1: figures undisturbed)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="worker logs, Redis files (default: a temp dir)"
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    if args.n < 3 or args.kills < 0 or args.outage < 0 or args.jobs < 1:
        parser.error("--n is at least 3; --kills, --outage are not negative; --jobs at least 1")
    return args


def failed(report: Report) -> bool:
    return not report.accounted or report.same_message_id is False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    config = Config(
        n=args.n,
        kills=args.kills,
        outage=args.outage,
        publish_timeout=args.publish_timeout,
        concurrency=args.concurrency,
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tasklane-chaos-"))
    command = shlex.join(["python", "-m", "tests.chaos", *argv])
    began = time.monotonic()
    print(f"chaos: logs in {workdir}", file=sys.stderr, flush=True)

    def progress(report: Report) -> None:
        elapsed = time.monotonic() - began
        print(f"chaos: [{elapsed:6.0f} s] {table_row(report)}", file=sys.stderr, flush=True)

    scrubbed = scrub_environment()
    if scrubbed:
        print(f"chaos: ignoring {', '.join(sorted(scrubbed))} from the shell", file=sys.stderr)
    scenarios = args.scenarios or available_scenarios()
    skipped = [name for name in SCENARIOS if name not in scenarios and args.scenarios is None]
    if skipped:
        print(f"chaos: skipped (needs ip netns, as root): {', '.join(skipped)}", file=sys.stderr)
    reports = run_all(config, args.brokers, scenarios, workdir, jobs=args.jobs, progress=progress)
    text = markdown(reports, config, command)
    print(text)
    if args.output is not None:
        args.output.write_text(text)
    print(f"chaos: done in {time.monotonic() - began:.0f} s", file=sys.stderr)
    return 1 if any(failed(report) for report in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
