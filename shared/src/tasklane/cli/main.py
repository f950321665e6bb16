"""The ``tasklane`` command: contracts, publishing, queue depths, dead letters and workers."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import socket
import sys
from dataclasses import replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from tasklane.cli.backends import open_schedules, require_results, require_state
from tasklane.cli.errors import CliError, Commands, parse_json_object
from tasklane.cli.errors import console as _console
from tasklane.cli.gateway import gateway_app
from tasklane.cli.result import result
from tasklane.cli.schedule import schedule_app
from tasklane.cli.tables import (
    AsJson,
    Wide,
    compact_table,
    compact_time,
    print_json,
    print_wide,
)
from tasklane.contracts import REGISTRY, ContractRegistry, TaskContract
from tasklane.contracts.validation import validate_payload
from tasklane.errors import PayloadValidationError, Problem
from tasklane.observability.metrics import prepare_multiproc_dir
from tasklane.publish import Publisher
from tasklane.schema import export_schemas
from tasklane.settings import Settings, load, load_settings
from tasklane.wire.broker import connect, redacted
from tasklane.wire.deadletter import DeadLetter, DeadLetterQueue
from tasklane.wire.queues import queue_depths
from tasklane.wire.routing import (
    QueueOptions,
    dlq_name,
    queue_name,
    queues_for_service,
    work_queue,
)

if TYPE_CHECKING:
    from kombu.connection import Connection

ERROR_PREVIEW_CHARS = 60
HEX_ROW_BYTES = 16

app = Commands(
    name="tasklane",
    help="Tasklane: typed task contracts, publishing, queues and dead letters.",
    no_args_is_help=True,
    add_completion=False,
    # Locals would print settings, broker URLs included, into terminals and CI logs.
    pretty_exceptions_show_locals=False,
)
contracts_app = Commands(help="Inspect and export task contracts.", no_args_is_help=True)
dlq_app = Commands(help="List, show, replay and purge dead letters.", no_args_is_help=True)
app.add_typer(contracts_app, name="contracts")
app.add_typer(dlq_app, name="dlq")
app.add_typer(schedule_app, name="schedule")
app.add_typer(gateway_app, name="gateway")


class Pool(StrEnum):
    """Celery worker pools."""

    prefork = "prefork"
    threads = "threads"
    solo = "solo"
    gevent = "gevent"
    eventlet = "eventlet"


# --------------------------------------------------------------------------- contracts


@contracts_app.command("list")
def contracts_list(wide: Wide = False, as_json: AsJson = False) -> None:
    """Show every task contract: queue, priority, retries, time limit (--wide: all policies)."""
    settings = load_settings()
    if as_json:
        print_json({"contracts": [_contract_json(c, settings.namespace) for c in REGISTRY]})
        return
    if wide:
        print_wide(_console(), _contracts_wide(settings.namespace))
        return
    table = compact_table(f"Task contracts (namespace {settings.namespace or '-'})")
    table.add_column("Task", style="bold", no_wrap=True)
    table.add_column("Queue", overflow="fold")
    table.add_column("Prio", justify="right")
    table.add_column("Retries", justify="right")
    table.add_column("Limit", justify="right")
    for contract in REGISTRY:
        table.add_row(
            contract.name,
            queue_name(contract, settings.namespace),
            str(contract.priority),
            str(contract.retry.max_retries),
            f"{contract.time_limit:g}s",
        )
    _console().print(table)


def _contracts_wide(namespace: str) -> Table:
    table = Table(title="Task contracts")
    table.add_column("Task", style="bold", no_wrap=True)
    table.add_column("Queue", no_wrap=True)
    table.add_column("DLQ", no_wrap=True)
    table.add_column("Priority", justify="right")
    table.add_column("Soft / hard limit", justify="right")
    table.add_column("Rate limit")
    table.add_column("Retries", justify="right")
    table.add_column("Idempotency key")
    for contract in REGISTRY:
        queue = queue_name(contract, namespace)
        table.add_row(
            contract.name,
            queue,
            dlq_name(queue),
            str(contract.priority),
            f"{contract.soft_time_limit:g}s / {contract.time_limit:g}s",
            contract.rate_limit or "-",
            str(contract.retry.max_retries),
            ", ".join(contract.idempotency_key) or "-",
        )
    return table


def _contract_json(contract: TaskContract[Any, Any], namespace: str) -> dict[str, Any]:
    """``contracts list --json``: one contract's routing and policies."""
    queue = queue_name(contract, namespace)
    return {
        "task": contract.name,
        "service": contract.service,
        "queue": queue,
        "dlq": dlq_name(queue),
        "priority": contract.priority,
        "soft_time_limit": contract.soft_time_limit,
        "time_limit": contract.time_limit,
        "rate_limit": contract.rate_limit,
        "max_retries": contract.retry.max_retries,
        "idempotency_key": list(contract.idempotency_key),
    }


@contracts_app.command("export")
def contracts_export(
    tasks: Annotated[
        list[str] | None, typer.Argument(help="Only these tasks (default: every contract).")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for the schema files.", file_okay=False)
    ] = Path("contracts"),
    openapi: Annotated[
        Path | None,
        typer.Option(
            "--openapi",
            help="Write the gateway's OpenAPI 3.1 document to this file instead.",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Write a JSON Schema per contract payload (<name>.json) and result (<name>.result.json),
    or with --openapi the gateway's OpenAPI document."""
    console = _console()
    # Unknown names fail here, with the closest known one suggested, before anything is written.
    chosen = tuple(REGISTRY[task] for task in dict.fromkeys(tasks or []))
    registry = ContractRegistry(chosen) if chosen else REGISTRY
    if openapi is not None:
        from tasklane.gateway.openapi import openapi_document

        openapi.parent.mkdir(parents=True, exist_ok=True)
        document = json.dumps(openapi_document(registry), indent=2, ensure_ascii=False)
        openapi.write_text(document + "\n", encoding="utf-8")
        console.print(str(openapi), highlight=False, soft_wrap=True)
        return
    for path in export_schemas(registry, out):
        console.print(str(path), highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------- submit


def _read_payloads(contract: TaskContract[Any, Any], file: Path) -> list[Any]:
    """Every payload of a JSON Lines file, validated, so errors name the file's line numbers."""
    models: list[Any] = []
    problems: list[Problem] = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        data = parse_json_object(line, f"{file}:{number}")
        try:
            models.append(validate_payload(contract, data))
        except PayloadValidationError as exc:
            problems.extend(replace(problem, item=f"line {number}:") for problem in exc.problems)
    if problems:
        raise PayloadValidationError(contract.name, problems)
    if not models:
        raise CliError(f"{file}: no payloads (expected one JSON object per line)")
    return models


def _submit_many(settings: Settings, contract: TaskContract[Any, Any], file: Path) -> None:
    payloads = _read_payloads(contract, file)
    console = _console()
    with (
        Publisher(settings) as publisher,
        Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress,
    ):
        bar = progress.add_task(f"publishing {contract.name}", total=len(payloads))
        handles = publisher.publish_many(
            contract, payloads, progress=lambda sent: progress.advance(bar, sent)
        )
    queue = queue_name(contract, settings.namespace)
    console.print(f"published {len(handles)} {contract.name} tasks to {queue}", highlight=False)


def _submit_one(
    settings: Settings, contract: TaskContract[Any, Any], payload: str, wait: bool, timeout: float
) -> None:
    data = parse_json_object(payload, "--json")
    if wait:
        require_results(settings)  # before publishing: a task nobody can wait for is not sent
    console = _console()
    with Publisher(settings) as publisher:
        handle = publisher.publish(contract, data)
        console.print(f"task id: {handle.id}", highlight=False)
        if settings.result_backend is None:
            # Without a result backend Celery cannot tell any state; say so instead of failing.
            console.print("state: unknown (no result backend)", highlight=False)
            return
        if not wait:
            console.print(f"state: {handle.state}", highlight=False)
            return
        with console.status(f"waiting up to {timeout:g}s for {contract.name} {handle.id}"):
            result = handle.get(timeout=timeout)
        # One state line: the final one (the PENDING seen at publish time says nothing more).
        console.print(f"state: {handle.state}", highlight=False)
    console.print_json(result.model_dump_json())


@app.command()
def submit(
    task: Annotated[str, typer.Argument(help="Task name, e.g. notifier.email.send.")],
    payload: Annotated[
        str | None, typer.Option("--json", help="The payload as one JSON object.")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help="JSON Lines file: one payload per line, published in bulk.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the result and print it (single task).")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.0, help="Seconds --wait waits for the result.")
    ] = 30.0,
) -> None:
    """Validate and publish one task (--json) or many (--file)."""
    if (payload is None) == (file is None):
        raise CliError("give exactly one of --json and --file")
    if wait and file is not None:
        raise CliError("--wait applies to a single task given with --json")
    settings = load_settings()
    contract = REGISTRY[task]
    if file is not None:
        _submit_many(settings, contract, file)
    else:
        assert payload is not None  # checked above; narrows the type
        _submit_one(settings, contract, payload, wait, timeout)


# The task's state by id, as `celery result` reads it (its own module: tasklane.cli.result).
app.command("result")(result)


# --------------------------------------------------------------------------- queues


@app.command()
def queues() -> None:
    """Show how many messages wait in every work queue and dead-letter queue."""
    settings = load_settings()
    table = Table(title=f"Queues on {_redacted(settings.require_broker())}")
    table.add_column("Queue", style="bold", no_wrap=True)
    table.add_column("Kind")
    table.add_column("Messages", justify="right")
    for depth in queue_depths(settings, REGISTRY):
        style = "red" if depth.kind == "dead-letter" and depth.messages else None
        table.add_row(depth.name, depth.kind, str(depth.messages), style=style)
    _console().print(table)


def _redacted(url: str) -> str:
    # Titles end up in terminals and logs: never show the broker password.
    return redacted(url)


# --------------------------------------------------------------------------- dlq


def _dead_letter_queues(settings: Settings) -> dict[str, TaskContract[Any, Any]]:
    """Every DLQ name under the namespace, with one contract whose work queue feeds it."""
    found: dict[str, TaskContract[Any, Any]] = {}
    for contract in REGISTRY:
        found.setdefault(dlq_name(queue_name(contract, settings.namespace)), contract)
    return found


def _dead_letter_queue(connection: Connection, name: str, settings: Settings) -> DeadLetterQueue:
    return DeadLetterQueue(connection, name, settings.namespace, QueueOptions.of(settings))


def _resolve_dlq(settings: Settings, queue: str) -> tuple[str, TaskContract[Any, Any]]:
    """The DLQ meant by ``queue``: a work queue or DLQ name, with or without the namespace."""
    known = _dead_letter_queues(settings)
    for candidate in (queue, settings.namespace + queue):
        for name in (candidate, dlq_name(candidate)):
            if name in known:
                return name, known[name]
    # Strict on purpose: on RabbitMQ a typo would otherwise declare a new, empty queue.
    raise CliError(f"unknown queue {queue!r}; known dead-letter queues: {', '.join(known)}")


def _truncate(text: str, limit: int = ERROR_PREVIEW_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _task_kwargs(letter: DeadLetter) -> Any:
    """The task's payload: the kwargs of a protocol v2 body, else the whole decoded body."""
    body = letter.payload()
    if isinstance(body, list) and len(body) == 3 and isinstance(body[1], dict):
        return body[1]
    return body


def hexdump(data: bytes) -> list[str]:
    """Lines of ``offset  16 bytes in hex  |the printable ASCII ones|``, as ``hexdump -C``."""
    lines: list[str] = []
    for offset in range(0, len(data), HEX_ROW_BYTES):
        row = data[offset : offset + HEX_ROW_BYTES]
        hexes = " ".join(f"{byte:02x}" for byte in row)
        ascii_ = "".join(chr(byte) if 0x20 <= byte < 0x7F else "." for byte in row)
        lines.append(f"{offset:08x}  {hexes:<{HEX_ROW_BYTES * 3 - 1}}  |{ascii_}|")
    return lines


def _printable(label: object) -> str:
    # Labels come from whoever published the message: escape control characters.
    text = str(label)
    return text if text.isprintable() else ascii(text)


def _json_ascii(data: Any) -> bool:
    """Whether ``data`` must be written as ASCII JSON: it holds lone surrogates, which no
    terminal or UTF-8 stream can take."""
    try:
        json.dumps(data, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _print_json(console: Console, data: Any) -> None:
    console.print_json(data=data, default=str, ensure_ascii=_json_ascii(data))


def _letter_fields(letter: DeadLetter) -> dict[str, Any]:
    """What ``dlq list --json`` gives of each letter; ``dlq show --json`` adds the rest."""
    return {
        "task": letter.task,
        "id": letter.task_id,
        "queue": letter.queue,
        "reason": letter.reason,
        "error_type": letter.error_type,
        "error": letter.error,
        "attempts": letter.attempts,
        "failed_at": letter.failed_at,
        "published_at": letter.published_at,
    }


def _letter_json(name: str, letter: DeadLetter) -> dict[str, Any]:
    """``dlq show --json``: every field of the letter and :meth:`DeadLetter.body_view`."""
    return {
        "dlq": name,
        **_letter_fields(letter),
        "content_type": letter.content_type,
        "content_encoding": letter.content_encoding,
        **letter.body_view(),
        "headers": letter.headers,
    }


def _print_body(console: Console, letter: DeadLetter) -> None:
    """The payload section of ``dlq show``: JSON or text as decoded, other bytes in hex."""
    view = letter.body_view()
    form, note = view["body_format"], view["body_note"]
    console.rule("payload")
    if form == "json":
        _print_json(console, _task_kwargs(letter))
    elif form == "text":
        if note:
            console.print(Text(f"{note}; shown as text:"))
        _print_json(console, view["body"])
    elif form == "empty":
        console.print(Text("empty body (0 bytes)"))
    else:
        shown, size = view["body_preview_bytes"], view["body_bytes"]
        extent = f"first {shown} of {size}" if view["body_truncated"] else f"all {size}"
        console.print(Text(f"binary body, not decoded ({note}); {extent} bytes in hex:"))
        console.print(Text("\n".join(hexdump(letter.body[:shown]))), soft_wrap=True)


@dlq_app.command("list")
def dlq_list(
    queue: Annotated[
        str | None, typer.Argument(help="Work queue or DLQ name; every DLQ when omitted.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Dead letters per queue.")] = 20,
    wide: Wide = False,
    as_json: AsJson = False,
) -> None:
    """List dead letters (oldest first) without removing them: # (for dlq show --index), task,
    reason, error, failed at, attempts; --wide adds the DLQ, id and error type."""
    settings = load_settings()
    names = [_resolve_dlq(settings, queue)[0]] if queue else list(_dead_letter_queues(settings))
    found: dict[str, tuple[int, list[DeadLetter]]] = {}
    with connect(settings) as connection:
        for name in names:
            dead_letters = _dead_letter_queue(connection, name, settings)
            letters = dead_letters.peek(limit)
            if letters or queue:
                found[name] = (dead_letters.depth() if letters else 0, letters)
    if as_json:
        print_json({"dead_letters": [_listed_json(n, *entry) for n, entry in found.items()]})
        return
    console = _console()
    if not any(letters for _, letters in found.values()):
        console.print(f"no dead letters in {', '.join(names)}", highlight=False)
    elif wide:
        print_wide(console, _dead_letters_wide(found))
    else:
        for name, (depth, letters) in found.items():
            console.print(_dead_letters_compact(name, depth, letters))


def _dead_letters_compact(name: str, depth: int, letters: list[DeadLetter]) -> Table:
    """One DLQ's letters in 80 columns: the error goes under the task, on a line of its own."""
    table = compact_table(f"{name}: {len(letters)} of {depth}, oldest first")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("Task / error", overflow="fold")
    table.add_column("Reason", no_wrap=True)
    table.add_column("Failed (UTC)", no_wrap=True)
    table.add_column("Tries", justify="right", no_wrap=True)
    for index, letter in enumerate(letters):
        cell = Text(letter.task or "?", style="bold")
        error = f"{letter.error_type}: {letter.error}" if letter.error_type else letter.error
        cell.append("\n" + _truncate(error), style="dim")
        table.add_row(
            str(index), cell, letter.reason, compact_time(letter.failed_at), str(letter.attempts)
        )
    return table


def _dead_letters_wide(found: dict[str, tuple[int, list[DeadLetter]]]) -> Table:
    table = Table(title="Dead letters")
    table.add_column("DLQ", no_wrap=True)
    table.add_column("#", justify="right")
    table.add_column("Task", style="bold", no_wrap=True)
    table.add_column("Id", no_wrap=True)
    table.add_column("Reason")
    table.add_column("Error type")
    table.add_column("Error")
    table.add_column("Attempts", justify="right")
    table.add_column("Failed at")
    for name, (_, letters) in found.items():
        for index, letter in enumerate(letters):
            table.add_row(
                name,
                str(index),
                letter.task or "?",
                letter.task_id or "?",
                letter.reason,
                letter.error_type,
                _truncate(letter.error),
                str(letter.attempts),
                letter.failed_at,
            )
    return table


def _listed_json(name: str, depth: int, letters: list[DeadLetter]) -> dict[str, Any]:
    """``dlq list --json``: one DLQ, its depth and its letters' fields (payloads: dlq show)."""
    return {
        "dlq": name,
        "depth": depth,
        "letters": [
            {"index": index, **_letter_fields(letter)} for index, letter in enumerate(letters)
        ],
    }


@dlq_app.command("show")
def dlq_show(
    queue: Annotated[str, typer.Argument(help="Work queue or DLQ name.")],
    index: Annotated[
        int, typer.Option("--index", min=0, help="Position in the DLQ, 0 = oldest.")
    ] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the dead letter as one JSON object.")
    ] = False,
) -> None:
    """Show one dead letter in full: reason, error, payload and headers.

    A body that isn't text (a pickle, compressed bytes, a wrong label) is shown as bytes.
    """
    settings = load_settings()
    name, _ = _resolve_dlq(settings, queue)
    with connect(settings) as connection:
        letters = _dead_letter_queue(connection, name, settings).peek(index + 1)
    if len(letters) <= index:
        raise CliError(f"{name} holds {len(letters)} dead letters; there is none at index {index}")
    letter = letters[index]
    if as_json:
        data = _letter_json(name, letter)
        typer.echo(json.dumps(data, indent=2, default=str, ensure_ascii=_json_ascii(data)))
        return
    details = Table.grid(padding=(0, 2))
    details.add_column(style="bold")
    details.add_column()
    for label, value in (
        ("DLQ", name),
        ("Task", letter.task or "?"),
        ("Id", letter.task_id or "?"),
        ("Queue", letter.queue),
        ("Reason", letter.reason),
        ("Error type", letter.error_type),
        ("Error", letter.error),
        ("Attempts", str(letter.attempts)),
        ("Failed at", letter.failed_at),
        ("Published at", letter.published_at),
        ("Content type", _printable(letter.content_type)),
        ("Content encoding", _printable(letter.content_encoding)),
        ("Body", f"{len(letter.body)} bytes"),
    ):
        details.add_row(label, Text(value))
    console = _console()
    console.print(details)
    _print_body(console, letter)
    console.rule("headers")
    _print_json(console, letter.headers)


@dlq_app.command("replay")
def dlq_replay(
    queue: Annotated[str, typer.Argument(help="Work queue or DLQ name.")],
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Replay at most this many.")
    ] = None,
) -> None:
    """Send dead letters back to their work queue with their retry count reset."""
    settings = load_settings()
    name, contract = _resolve_dlq(settings, queue)
    with connect(settings) as connection:
        target_queue = work_queue(contract, settings.namespace, QueueOptions.of(settings))
        count = _dead_letter_queue(connection, name, settings).replay(target_queue, limit)
    target = queue_name(contract, settings.namespace)
    _console().print(f"replayed {count} dead letters from {name} to {target}", highlight=False)


@dlq_app.command("purge")
def dlq_purge(
    queue: Annotated[str, typer.Argument(help="Work queue or DLQ name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete every dead letter of one DLQ."""
    settings = load_settings()
    name, _ = _resolve_dlq(settings, queue)
    with connect(settings) as connection:
        dead_letters = _dead_letter_queue(connection, name, settings)
        if not yes:
            typer.confirm(f"Delete all {dead_letters.depth()} dead letters of {name}?", abort=True)
        count = dead_letters.purge()
    _console().print(f"purged {count} dead letters from {name}", highlight=False)


# --------------------------------------------------------------------------- worker


def select_queues(service: str, wanted: list[str] | None, settings: Settings) -> list[str]:
    """The namespaced queues a worker of ``service`` consumes: all of them, or ``wanted``.

    ``wanted`` holds queue names (with or without the namespace), each maybe comma-separated,
    as ``-Q a,b -Q c`` gives them. Order follows the service's queue order (queue-name order),
    which is the order Redis polls them in, whatever order they were given in.

    Raises:
        CliError: a name is not one of the service's queues, or none is left.
    """
    known = [q.name for q in queues_for_service(REGISTRY, service, settings.namespace)]
    if not wanted:
        return known
    chosen: set[str] = set()
    for item in wanted:
        for name in (part.strip() for part in item.split(",")):
            if not name:
                continue
            # The chart and people name contract queues; the namespace is a deployment setting.
            full = name if name in known else settings.namespace + name
            if full not in known:
                raise CliError(
                    f"queue {name!r} is not a queue of the {service} service; "
                    f"its queues: {', '.join(known)}"
                )
            chosen.add(full)
    if not chosen:
        raise CliError(
            f"--queues names no queue; the {service} service's queues: {', '.join(known)}"
        )
    return [name for name in known if name in chosen]


def worker_command(
    service: str,
    settings: Settings,
    *,
    concurrency: int | None = None,
    pool: str = Pool.prefork.value,
    loglevel: str = "INFO",
    queues: list[str] | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    """The ``celery worker`` argv of one service, consuming its queues or a subset of them.

    Raises:
        CliError: no contract belongs to ``service``, or ``queues`` names a queue not its own.
    """
    services = REGISTRY.services()
    if service not in services:
        raise CliError(f"unknown service {service!r}; known services: {', '.join(services)}")
    names = select_queues(service, queues, settings)
    argv = [sys.executable, "-m", "celery", "-A", f"{service}.app", "worker"]
    argv += ["-Q", ",".join(names), "--pool", pool, "--loglevel", loglevel]
    # A per-service node name: two services on one host would otherwise both be celery@host.
    argv += ["--hostname", f"{service}@%h"]
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    return argv + list(extra or [])


def _ip_address(value: str, option: str) -> str:
    """``value`` if it is an IP address, else a :class:`CliError` naming ``option``."""
    from ipaddress import ip_address

    try:
        return str(ip_address(value))
    except ValueError:
        raise CliError(
            f"{option}: {value!r} is not an IP address (0.0.0.0, ::, 127.0.0.1)"
        ) from None


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@app.command()
def worker(
    service: Annotated[str, typer.Argument(help="Service name, e.g. notifier.")],
    extra: Annotated[
        list[str] | None, typer.Argument(help="Extra celery worker arguments, after --.")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", "-c", min=1, help="Worker processes.")
    ] = None,
    pool: Annotated[Pool, typer.Option("--pool", "-P", help="Celery pool.")] = Pool.prefork,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="Log level.")] = "INFO",
    queues: Annotated[
        list[str] | None,
        typer.Option(
            "--queues",
            "-Q",
            help="Consume only these of the service's queues (comma-separated or repeated).",
        ),
    ] = None,
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the command instead of running it.")
    ] = False,
) -> None:
    """Run a service's Celery worker on the queues of its contracts (all, or --queues)."""
    settings = load_settings()
    argv = worker_command(
        service,
        settings,
        concurrency=concurrency,
        pool=pool.value,
        loglevel=loglevel,
        queues=queues,
        extra=extra,
    )
    if print_only:
        # Plain echo: Rich would wrap a long command line and break copy-paste.
        typer.echo(shlex.join(argv))
        return
    if not _module_exists(f"{service}.app"):
        raise CliError(f"module {service}.app not found: is the {service} service installed?")
    if settings.metrics_port is not None:
        # Pool children write their metrics to files the main process serves together.
        prepare_multiproc_dir(os.environ)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)


# --------------------------------------------------------------------------- beat


@app.command()
def beat(
    extra: Annotated[
        list[str] | None, typer.Argument(help="Extra celery beat arguments, after --.")
    ] = None,
    celery_app: Annotated[
        str,
        typer.Option(
            "--app", "-A", help="Celery app whose beat_schedule / add_periodic_task to load."
        ),
    ] = "tasklane.beat.celery",
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="Log level.")] = "INFO",
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the command instead of running it.")
    ] = False,
) -> None:
    """Run Beat: one active scheduler (a Redis lock), any number in standby."""
    from tasklane.beat.scheduler import BeatSettings
    from tasklane.settings import load

    # Clear errors now rather than in celery's banner, whichever app --app names.
    require_state(load_settings())
    load(BeatSettings)
    argv = [sys.executable, "-m", "celery", "-A", celery_app, "beat"]
    argv += ["--scheduler", "tasklane.beat.scheduler:TasklaneScheduler", "--loglevel", loglevel]
    argv += list(extra or [])
    if print_only:
        typer.echo(shlex.join(argv))
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)


@app.command("schedule-api")
def schedule_api(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port.")] = 8080,
) -> None:
    """Serve the schedule HTTP API; the token comes from TASKLANE_SCHEDULE_API_TOKEN."""
    from tasklane.beat.api import serve  # FastAPI and uvicorn: the optional "api" extra

    serve(load_settings(), host=host, port=port)


@app.command("beat-health")
def beat_health(
    max_age: Annotated[
        float, typer.Option("--max-age", min=1.0, help="Seconds since the last tick allowed.")
    ] = 30.0,
) -> None:
    """Exit 0 if a Beat process on this host ticked within --max-age (Kubernetes probes /livez)."""
    host = socket.gethostname()
    with open_schedules() as schedules:
        mine = [s for s in schedules.beats() if s.process.split(":")[0] == host]
    if not mine:
        raise CliError(f"no Beat process on {host} has reported")
    newest = max(mine, key=lambda status: status.last_tick)
    age = (datetime.now(UTC) - newest.last_tick).total_seconds()
    role = "active" if newest.holds_lock else "standby"
    if age > max_age:
        raise CliError(f"Beat {newest.process} last ticked {age:.1f}s ago (over {max_age:g}s)")
    typer.echo(f"{newest.process}: {role}, last tick {age:.1f}s ago, {newest.schedules} schedules")


@app.command()
def exporter(
    port: Annotated[
        int,
        typer.Option(
            "--port",
            min=1,
            max=65535,
            help="Port; 9808 is celery-exporter's default too: give one of them another.",
        ),
    ] = 9808,
    address: Annotated[
        str | None,
        typer.Option("--address", help="Address to listen on [default: TASKLANE_METRICS_ADDRESS]."),
    ] = None,
    interval: Annotated[
        float, typer.Option("--interval", min=0.0, help="Seconds a broker read is reused.")
    ] = 15.0,
) -> None:
    """Serve Prometheus queue gauges read from the broker on /metrics until SIGTERM."""
    from tasklane.observability.exporter import serve  # loaded by this command alone

    settings = load_settings()
    listen = str(settings.metrics_address) if address is None else address
    serve(settings, port=port, interval=interval, addr=_ip_address(listen, "--address"))


@app.command()
def flower(
    extra: Annotated[
        list[str] | None, typer.Argument(help="Extra Flower options (--name=value), after --.")
    ] = None,
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the command (passwords masked) instead.")
    ] = False,
) -> None:
    """Run Flower on the fleet's broker, behind basic auth (TASKLANE_FLOWER_* settings)."""
    from tasklane.observability.flower import (  # the optional "flower" extra
        FlowerSettings,
        flower_command,
        flower_environment,
    )

    settings, flower_settings = load_settings(), load(FlowerSettings)
    argv = flower_command(settings, flower_settings) + list(extra or [])
    if print_only:
        masked = flower_environment(flower_settings, redact=True)
        typer.echo(shlex.join([f"{name}={value}" for name, value in masked.items()] + argv))
        return
    if not _module_exists("flower"):
        raise CliError("Flower is not installed: install the tasklane[flower] extra")
    os.environ.update(flower_environment(flower_settings))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)


def main() -> None:
    """Entry point of the ``tasklane`` console script."""
    app()
