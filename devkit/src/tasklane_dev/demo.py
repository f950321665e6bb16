"""``make demo``: real notifier and scraper workers doing the platform's main jobs, both ends shown.

It publishes a sample email and IM message to the notifier, then crawls a small local catalogue
site with the scraper and builds the crawl's report. Without ``TASKLANE_BROKER_URL``/``REDIS_URL``
an embedded Valkey server is the broker. A local SMTP sink, a webhook sink and the catalogue site
stand in for the outside world. ``--keep-running`` (``make up``) leaves the stack up until Ctrl-C,
SIGTERM or SIGHUP; each stops the workers warmly, then the broker, and removes the temporary files.
The crawl's report stays in ``./demo-output/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from rich.console import Console
from rich.panel import Panel

from tasklane.contracts import (
    BUILD_REPORT,
    CRAWL_SITE,
    CRAWL_STATUS,
    SEND_EMAIL,
    SEND_IM,
    CrawlPayload,
    EmailPayload,
    IMPayload,
    ReportPayload,
)
from tasklane.publish import Publisher, TaskHandle
from tasklane.settings import Settings
from tasklane_dev.reaper import WARM_SHUTDOWN_SECONDS, Reaper
from tasklane_dev.sinks import Reply, SiteServer, SmtpSink, WebhookSink
from tasklane_dev.stopping import Stopped, StopSignals

DEMO_SECRET_NAME = "demo-webhook"
DEMO_SECRET = "demo-signing-secret"
# The crawl's artifacts (its data and HTML report) outlive the demo, in the working directory.
OUTPUT_DIR = "demo-output"


def _guarded(signals: StopSignals | None) -> contextlib.AbstractContextManager[None]:
    return signals.deferred() if signals else contextlib.nullcontext()


@contextlib.contextmanager
def broker_url(
    console: Console, signals: StopSignals | None = None, reaper: Reaper | None = None
) -> Iterator[str]:
    """The configured broker, or an embedded Valkey server for the demo's lifetime."""
    configured = os.environ.get("TASKLANE_BROKER_URL") or os.environ.get("REDIS_URL")
    if configured:
        console.print(f"broker: [bold]{configured}[/] (from the environment)")
        yield configured
        return
    from tasklane_dev.embedded import EmbeddedBroker

    broker = EmbeddedBroker()
    try:
        # A stop signal waits until the server's pid is with the watchdog.
        with _guarded(signals):
            if reaper:
                reaper.path(broker.data_dir)
            broker.start()
            if reaper:
                reaper.process(broker.pid)
        console.print(f"broker: embedded Valkey at [bold]{broker.url}[/]")
        yield broker.url
    finally:
        broker.stop()


@contextlib.contextmanager
def service_worker(
    service: str,
    env: dict[str, str],
    log: Path,
    signals: StopSignals | None = None,
    reaper: Reaper | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A real worker process of ``service``; stopped with a warm shutdown on exit.

    The worker gets SIGTERM (Celery's warm shutdown: running tasks finish) and, if it is still
    there after ``WARM_SHUTDOWN_SECONDS``, SIGKILL, both to its process group.
    """
    with log.open("wb") as out:
        with _guarded(signals):
            process = subprocess.Popen(
                [str(Path(sys.executable).with_name("tasklane")), "worker", service,
                 "--concurrency", "2", "--", "--without-gossip", "--without-mingle"],
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the demo, which stops workers warmly
            )  # fmt: skip
            if reaper:
                reaper.group(process.pid)
        try:
            deadline = time.monotonic() + 60
            while " ready." not in log.read_text(errors="replace"):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{service} worker did not start:\n{log.read_text()}")
                time.sleep(0.1)
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(WARM_SHUTDOWN_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def catalogue_site() -> SiteServer:
    """A small shop: a home page, six products with prices, a dead link and a private area."""
    products = {
        f"/product/{n}": (name, price)
        for n, (name, price) in enumerate(
            [("Blue kettle", "19.90"), ("Red mug", "7.50"), ("Tea tin", "12.00"),
             ("Green teapot", "34.00"), ("Tea towel", "5.25"), ("Cup set", "28.40")],
            start=1,
        )
    }  # fmt: skip

    def page(title: str, body: str) -> Reply:
        return Reply(
            body=f"<html><head><title>{title}</title></head><body>{body}</body></html>".encode()
        )

    links = "".join(f'<a href="{path}">{name}</a> ' for path, (name, _) in products.items())
    pages = {
        "/robots.txt": Reply(
            body=b"User-agent: *\nDisallow: /admin/\n", headers={"Content-Type": "text/plain"}
        ),
        "/": page("Shop", f'{links}<a href="/admin/">admin</a> <a href="/old-offer">offer</a>'),
    }
    for n, (path, (name, price)) in enumerate(products.items(), start=1):
        related = list(products)[n % len(products)]
        pages[path] = page(
            name,
            f'<h1>{name}</h1><span class="price">{price}</span><a href="/">home</a> '
            f'<a href="{related}">related</a>',
        )
    return SiteServer(pages)


def _show_published(console: Console, handle: TaskHandle[Any]) -> None:
    # Asked right after publishing, like the seed's add.delay(4, 4): normally not ready yet,
    # though a fast worker can win the race.
    console.print(f"published {handle.contract.name}  id={handle.id}  ready: {handle.ready()}")


def crawl_and_report(console: Console, publisher: Publisher, site_url: str) -> None:
    """Crawl the catalogue, show the crawl's status as it moves, then build and show its report."""
    crawl = publisher.publish(
        CRAWL_SITE,
        CrawlPayload.model_validate(
            {
                "seeds": [f"{site_url}/"],
                "max_depth": 2,
                "max_pages": 20,
                "selectors": {"price": {"css": "span.price"}},
            }
        ),
    ).get(timeout=30)
    status = crawl
    while status.state != "completed":
        console.print(
            f"crawl {crawl.crawl_id}: {status.state}, level {status.level}, "
            f"{status.fetched} fetched, {status.failed} failed"
        )
        time.sleep(0.3)
        status = publisher.publish(CRAWL_STATUS, {"crawl_id": crawl.crawl_id}).get(timeout=30)
    console.print(
        f"crawl {crawl.crawl_id}: [green]completed[/], {status.fetched} fetched, "
        f"{status.failed} failed, data: {status.data_uri}"
    )
    report = publisher.publish(BUILD_REPORT, ReportPayload(crawl_id=crawl.crawl_id)).get(60)
    linked = ", ".join(
        f"{link.url.removeprefix(site_url)} ({link.inlinks})" for link in report.most_linked[:3]
    )
    times = report.response_ms
    console.print(
        Panel(
            f"pages {report.pages}: {report.fetched} fetched, {report.failed} failed\n"
            f"by status: {report.by_status}\nby content type: {report.by_content_type}\n"
            f"response ms: p50 {times.get('p50')}  p99 {times.get('p99')}\n"
            f"most linked: {linked}",
            title="crawl report",
        )
    )
    # On a line of its own, never wrapped or cut, so it can be copied whole at any width.
    console.print(f"HTML report: {_local_path(report.html_uri)}", markup=False, highlight=False)


def _local_path(uri: str) -> str:
    """A ``file://`` URI as a path to open; any other store's URI as it is."""
    parts = urlsplit(uri)
    return unquote(parts.path) if parts.scheme == "file" else uri


def tasklane_command() -> str:
    """The ``tasklane`` script next to this interpreter, relative to the working directory when
    it is inside it (``.venv-demo/bin/tasklane``)."""
    script = Path(sys.executable).with_name("tasklane")
    with contextlib.suppress(ValueError):
        script = script.relative_to(Path.cwd())
    shown = str(script)
    return shlex.quote(shown if "/" in shown else f"./{shown}")


def show_commands(console: Console, url: str, namespace: str, logs: Path) -> None:
    """The keep-running banner: how to stop the stack and how to reach it with ``tasklane``."""
    tasklane = tasklane_command()
    email = {
        "to": ["ada@example.com"],
        "subject": "Hello again",
        "template": "welcome",
        "context": {"name": "Ada", "product": "Tasklane"},
    }
    lines = [
        f"export TASKLANE_BROKER_URL={shlex.quote(url)} TASKLANE_NAMESPACE={namespace}",
        f"{tasklane} queues",
        f"{tasklane} dlq list",
        f"{tasklane} submit {SEND_EMAIL.name} --wait --json {shlex.quote(json.dumps(email))}",
    ]
    console.print("[green]stack is up[/]: Ctrl-C stops it (so do SIGTERM and SIGHUP)")
    console.print(f"worker logs: {logs}", markup=False, highlight=False)
    console.print("from another shell, the tasklane command reaches this stack:")
    for line in lines:
        console.print(f"  {line}", markup=False, highlight=False)


def run(keep_running: bool = False) -> int:
    """Run the demo; returns the exit status.

    Ctrl-C while ``--keep-running`` waits is the way to stop the stack: exit status 0. Any other
    stop (SIGTERM, SIGHUP, Ctrl-C before the stack is up) cleans up the same way and exits with
    128 plus the signal's number, as a shell reports a process that signal ended.
    """
    console = Console(soft_wrap=True)
    try:
        with StopSignals() as signals:
            _demo(console, signals, keep_running)
    except Stopped as stopped:
        console.print(f"[yellow]stopped by {stopped}[/]: everything shut down")
        return stopped.exit_status
    console.print("[green]demo finished[/]: everything shut down")
    return 0


def _demo(console: Console, signals: StopSignals, keep_running: bool) -> None:
    with contextlib.ExitStack() as stack:
        # The watchdog first, told "done" last: it cleans up only if the demo is killed outright.
        reaper = stack.enter_context(Reaper())
        url = stack.enter_context(broker_url(console, signals, reaper))
        smtp = stack.enter_context(SmtpSink())
        hooks = stack.enter_context(WebhookSink())
        console.print(f"SMTP sink: 127.0.0.1:{smtp.port}   webhook sink: {hooks.url}")
        settings = Settings(broker_url=url, namespace="demo.")
        with signals.deferred():
            scratch = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="tasklane-demo-"))
            )
            reaper.path(scratch)
        log = scratch / "worker.log"
        env = {
            "TASKLANE_BROKER_URL": url,
            "TASKLANE_NAMESPACE": settings.namespace,
            "TASKLANE_LOG_FORMAT": "text",  # worker logs for people to read
            "TASKLANE_NOTIFIER_SMTP_PORT": str(smtp.port),
            "TASKLANE_NOTIFIER_WEBHOOK_ALLOW": "127.0.0.1/32",  # the local webhook sink
            "TASKLANE_NOTIFIER_DEFAULT_SENDER": "demo@example.org",
            "TASKLANE_NOTIFIER_SECRETS": json.dumps({DEMO_SECRET_NAME: DEMO_SECRET}),
            # The pool's scratch files go with the rest, even when a worker has to be killed.
            "TMPDIR": str(scratch),
        }
        with console.status("starting the notifier worker…"):
            stack.enter_context(service_worker("notifier", env, log, signals, reaper))
        console.print("notifier worker: [green]ready[/]")
        publisher = stack.enter_context(Publisher(settings))
        show_notifications(console, publisher, smtp, hooks)
        artifacts = os.environ.get("TASKLANE_ARTIFACTS_URL") or ((Path.cwd() / OUTPUT_DIR).as_uri())
        site = stack.enter_context(catalogue_site())
        scraper_env = {
            **env,
            "TASKLANE_ARTIFACTS_URL": artifacts,
            "TASKLANE_SCRAPER_ALLOW": "127.0.0.1/32",  # the local catalogue site
            "TASKLANE_SCRAPER_MIN_DELAY": "0.05",
            "TASKLANE_SCRAPER_MAX_CONCURRENCY": "4",
        }
        with console.status("starting the scraper worker…"):
            stack.enter_context(
                service_worker(
                    "scraper", scraper_env, log.with_name("scraper.log"), signals, reaper
                )
            )
        console.print(f"scraper worker: [green]ready[/]   catalogue site: {site.url}")
        crawl_and_report(console, publisher, site.url)
        if keep_running:
            show_commands(console, url, settings.namespace, scratch)
            try:
                signals.wait()
            except Stopped as stopped:
                if stopped.signum != signal.SIGINT:
                    raise
                console.print("Ctrl-C: stopping the stack")


def show_notifications(
    console: Console, publisher: Publisher, smtp: SmtpSink, hooks: WebhookSink
) -> None:
    """Publish a sample email and IM message, then show what the SMTP and webhook sinks got."""
    email = publisher.publish(
        SEND_EMAIL,
        EmailPayload(
            to=["ada@example.com"],
            subject="Welcome to Tasklane",
            template="welcome",
            context={"name": "Ada", "product": "Tasklane"},
        ),
    )
    _show_published(console, email)
    im = publisher.publish(
        SEND_IM,
        IMPayload(
            channel="webhook",
            url=f"{hooks.url}/hooks/deploys",
            title="Deploy finished",
            text="notifier v0.1.0 is live",
            secret_ref=DEMO_SECRET_NAME,
        ),
    )
    _show_published(console, im)
    for handle in (email, im):
        result = handle.get(timeout=30)
        console.print(f"{handle.contract.name} ready: {handle.ready()}  result: {result!r}")

    mail = smtp.wait_for(1)[0].message
    text = mail.get_body(("plain",))
    console.print(
        Panel(
            f"From: {mail['From']}\nTo: {mail['To']}\nSubject: {mail['Subject']}\n"
            f"Message-ID: {mail['Message-ID']}\n\n{text.get_content() if text else ''}",
            title="SMTP sink received",
        )
    )
    request = hooks.wait_for(1)[0]
    console.print(
        Panel(
            f"POST {request.path}\nX-Tasklane-Signature: "
            f"{request.headers.get('x-tasklane-signature')}\n\n{request.body.decode()}",
            title="webhook sink received",
        )
    )


def main() -> None:
    """Entry point of ``python -m tasklane_dev.demo``."""
    sys.exit(run(keep_running="--keep-running" in sys.argv[1:]))


if __name__ == "__main__":
    main()
