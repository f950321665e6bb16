"""``tasklane dlq list/show/replay`` on dead letters whose body is not UTF-8 JSON, on both brokers.

Pickles, compressed or base64 bodies, bodies whose ``content-encoding`` label is unknown, names a
codec that is not a text encoding (zlib, hex, rot13) or lies (utf-8 on other bytes), and empty
bodies: each is shown as its size, labels and a bounded hex preview; none is ever unpickled, and
no command crashes.
"""

from __future__ import annotations

import base64
import gzip
import json
import pickle
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kombu.connection import Connection
from kombu.messaging import Producer
from typer.testing import CliRunner, Result

from tasklane.cli.main import app
from tasklane.contracts import SEND_EMAIL
from tasklane.wire.deadletter import (
    DeadLetter,
    DeadLetterQueue,
    dead_letter_headers,
    send_to_dlq,
)
from tasklane.wire.protocol import encode_body, task_headers
from tasklane.wire.routing import QueueOptions, dlq_name, queue_name, work_queue
from tasklane_dev.sinks import SmtpSink
from tests.support.harness import BrokerEnv, WorkerProcess, wait_for_dead_letters

EMAIL = {"to": ["ada@example.com"], "subject": "Hello", "text": "Hi Ada"}
PICKLE = "application/x-python-serialize"


class Touch:
    """Unpickling this creates a file: the proof that nothing unpickled a dead letter."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return Path.touch, (self.path,)


@dataclass(frozen=True)
class Odd:
    """One dead letter to write: its body and labels."""

    case: str
    body: bytes
    content_type: str
    content_encoding: str


@pytest.fixture
def cli(broker: BrokerEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[BrokerEnv]:
    """The ``tasklane`` command pointed at this test's broker and namespace."""
    for key, value in broker.env().items():
        monkeypatch.setenv(key, value)
    # Wide, colourless output so lines are never wrapped or mixed with escape codes.
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    yield broker


def run(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"exit {result.exit_code}:\n{result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output
    return result


def show_json(index: int) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(
        run("dlq", "show", "notifier.email", "--index", str(index), "--json").stdout
    )
    return shown


def hex_of(data: bytes) -> str:
    """Bytes as ``tasklane dlq show`` prints them in its preview: two hex digits, spaced."""
    return " ".join(f"{byte:02x}" for byte in data)


def write_dead_letter(broker: BrokerEnv, odd: Odd) -> str:
    """Put one dead letter with ``odd``'s body and labels into the email DLQ; its task id."""
    task_id = str(uuid.uuid4())
    queue = queue_name(SEND_EMAIL, broker.namespace)
    headers = dead_letter_headers(
        task_headers(SEND_EMAIL.name, task_id),
        queue=queue,
        reason="undecodable",
        error_type="DecodeError",
        error=f"odd body: {odd.case}",
        attempts=1,
        worker="test@host",
    )
    with Connection(broker.broker_url) as connection:
        send_to_dlq(
            Producer(connection.default_channel),
            queue=queue,
            namespace=broker.namespace,
            options=QueueOptions.of(broker.settings),
            body=odd.body,
            content_type=odd.content_type,
            content_encoding=odd.content_encoding,
            headers=headers,
            properties={"correlation_id": task_id},
        )
    return task_id


def odd_bodies(marker: Path) -> list[Odd]:
    email = encode_body(EMAIL)
    return [
        Odd("pickle", pickle.dumps(Touch(marker)), PICKLE, "binary"),
        Odd("gzip", gzip.compress(email), "application/json", "gzip"),
        Odd("base64", base64.b64encode(email), "application/json", "base64"),
        Odd("zlib", zlib.compress(email), "application/json", "zlib"),
        Odd("rot13", b"uryyb", "text/plain", "rot13"),
        Odd("hex", b"7b7d", "application/json", "hex"),
        Odd("unknown", bytes(range(256)) * 2, "application/octet-stream", "x-no-such-codec"),
        Odd("lying-utf8", b'[[], {"text": "caf\xe9"}, {}]', "application/json", "utf-8"),
        Odd("markup", b"\x00\x01[red]x[/red]", "application/octet-stream", "[/bold]"),
        Odd("empty", b"", "application/json", "utf-8"),
        Odd("json", email, "application/json", "utf-8"),
    ]


def test_dlq_commands_survive_odd_bodies(cli: BrokerEnv, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    odds = odd_bodies(marker)
    ids = [write_dead_letter(cli, odd) for odd in odds]

    listed = run("dlq", "list", "notifier.email", "--limit", "50", "--wide").output
    for task_id in ids:
        assert task_id in listed

    for index, (odd, task_id) in enumerate(zip(odds, ids, strict=True)):
        shown = run("dlq", "show", "notifier.email", "--index", str(index)).output
        assert task_id in shown, odd.case
        assert f"Content encoding  {odd.content_encoding}" in shown, (odd.case, shown)
        assert f"{len(odd.body)} bytes" in shown, (odd.case, shown)
        view = show_json(index)
        assert view["id"] == task_id
        assert view["content_type"] == odd.content_type
        assert view["content_encoding"] == odd.content_encoding
        assert view["body_bytes"] == len(odd.body)
        if odd.case == "json":
            assert '"subject": "Hello"' in shown  # pretty JSON of the kwargs, as before
            assert view["body_format"] == "json"
            assert view["body"] == [[], EMAIL, {"callbacks": None, "errbacks": None,
                                                "chain": None, "chord": None}]  # fmt: skip
            assert view["body_base64"] is None
            continue
        if odd.case == "empty":
            assert "empty body" in shown
            assert view["body_format"] == "empty"
            assert view["body"] is None
            assert view["body_base64"] == ""
            continue
        # Everything else is shown as bytes: a hex preview in the terminal, base64 in JSON.
        preview = odd.body[:128]
        assert hex_of(preview[:16]) in shown, (odd.case, shown)
        assert view["body_format"] == "binary", odd.case
        assert view["body"] is None
        assert base64.b64decode(view["body_base64"]) == preview
        assert view["body_preview_bytes"] == len(preview)
        assert view["body_note"], odd.case
        if odd.case == "unknown":
            assert f"first 128 of {len(odd.body)} bytes" in shown
            assert hex_of(odd.body[128:144]) not in shown  # the preview is bounded
        if odd.case == "lying-utf8":
            assert "not valid utf-8" in shown
            assert "�" not in shown  # no silently replaced characters

    # Replaying sends every body back byte for byte with its labels; nothing was unpickled.
    replayed = run("dlq", "replay", "notifier.email").output
    assert f"replayed {len(odds)} dead letters" in replayed
    assert not marker.exists()
    with Connection(cli.broker_url) as connection, connection.channel() as channel:
        queue = work_queue(SEND_EMAIL, cli.namespace, QueueOptions.of(cli.settings)).bind(channel)
        back: dict[str, tuple[bytes, str, str]] = {}
        while (message := queue.get(no_ack=True, accept=None)) is not None:
            body = message.body
            if isinstance(body, str):  # py-amqp decodes bodies whose label is a text encoding
                body = body.encode(message.content_encoding)
            back[message.headers["id"]] = (body, message.content_type, message.content_encoding)
    assert back == {
        task_id: (odd.body, odd.content_type, odd.content_encoding)
        for odd, task_id in zip(odds, ids, strict=True)
    }


def send_raw(broker: BrokerEnv, body: bytes, *, content_type: str, content_encoding: str) -> str:
    """Publish bytes straight to the email work queue, labelled as given; the task id."""
    task_id = str(uuid.uuid4())
    with Connection(broker.broker_url) as connection:
        Producer(connection.default_channel).publish(
            body,
            exchange="",
            routing_key=queue_name(SEND_EMAIL, broker.namespace),
            headers=task_headers(SEND_EMAIL.name, task_id),
            content_type=content_type,
            content_encoding=content_encoding,
            correlation_id=task_id,
        )
    return task_id


def test_worker_dead_letters_and_cli_shows_what_it_refused(
    cli: BrokerEnv, smtp_sink: SmtpSink, start_worker: Any, tmp_path: Path
) -> None:
    """What a real worker does with odd labels, and that the CLI shows its dead letters.

    Kombu parses an ``application/json`` body as UTF-8 whatever its ``content-encoding`` label:
    valid JSON labelled gzip runs; gzip or base64 bytes of JSON so labelled are undecodable (the
    label is not applied as a transformation). On RabbitMQ
    py-amqp first decodes a body whose label is a Python text codec (latin-1 here), so the same
    latin-1 JSON runs there but is undecodable on Redis.
    """
    marker = tmp_path / "unpickled"
    worker: WorkerProcess = start_worker()
    latin1 = json.dumps([[], {**EMAIL, "subject": "Café"}, {}], ensure_ascii=False)
    sent = {
        "pickle": send_raw(
            cli, pickle.dumps(Touch(marker)), content_type=PICKLE, content_encoding="binary"
        ),
        "base64": send_raw(
            cli,
            base64.b64encode(encode_body(EMAIL)),
            content_type="application/json",
            content_encoding="base64",
        ),
        "gzip-bytes": send_raw(
            cli,
            gzip.compress(encode_body(EMAIL)),
            content_type="application/json",
            content_encoding="gzip",
        ),
        "latin-1": send_raw(
            cli,
            latin1.encode("latin-1"),
            content_type="application/json",
            content_encoding="latin-1",
        ),
        "gzip-label": send_raw(
            cli,
            encode_body({**EMAIL, "subject": "Labelled gzip"}),
            content_type="application/json",
            content_encoding="gzip",
        ),
    }
    undecodable = ["pickle", "base64", "gzip-bytes"]
    undecodable += ["latin-1"] if cli.kind == "redis" else []
    delivered = len(sent) - len(undecodable)
    letters = {
        str(letter.task_id): letter
        for letter in wait_for_dead_letters(cli, "notifier.email", len(undecodable), timeout=60)
    }
    mails = smtp_sink.wait_for(delivered, timeout=60)
    subjects = sorted(str(mail.message["Subject"]) for mail in mails)
    assert subjects == sorted(["Labelled gzip"] + (["Café"] if cli.kind == "rabbitmq" else []))
    assert sorted(letters) == sorted(sent[case] for case in undecodable)
    assert all(letter.reason == "undecodable" for letter in letters.values())
    assert worker.process.poll() is None

    listed = run("dlq", "list", "notifier.email", "--wide").output
    assert all(task_id in listed for task_id in letters)
    by_id = {}
    for index in range(len(letters)):
        view = show_json(index)
        shown = run("dlq", "show", "notifier.email", "--index", str(index)).output
        by_id[view["id"]] = (view, shown)
    pickled: DeadLetter = letters[sent["pickle"]]
    view, shown = by_id[sent["pickle"]]
    assert pickled.body == pickle.dumps(Touch(marker))
    assert (view["content_type"], view["content_encoding"]) == (PICKLE, "binary")
    assert view["body_format"] == "binary"
    assert view["body"] is None
    assert base64.b64decode(view["body_base64"]) == pickled.body[:128]
    assert "binary" in shown and f"{len(pickled.body)} bytes" in shown
    assert hex_of(pickled.body[:16]) in shown
    view, shown = by_id[sent["base64"]]
    assert view["body_format"] == "binary"
    assert "'base64' is not a text encoding" in shown
    view, shown = by_id[sent["gzip-bytes"]]
    assert (view["body_format"], view["content_encoding"]) == ("binary", "gzip")
    assert "'gzip' is not a text encoding" in shown
    assert "00000000  1f 8b" in shown  # the gzip magic, shown, not decompressed
    if cli.kind == "redis":
        view, shown = by_id[sent["latin-1"]]
        # Shown decoded under its own label, though the worker parsed it as UTF-8.
        assert view["body"][1]["subject"] == "Café"
    assert not marker.exists()


@pytest.mark.parametrize("label", ["latin-1", "utf-16", "cp1252"])
def test_a_body_labelled_with_a_text_codec_is_read_back_byte_for_byte(
    broker: BrokerEnv, label: str
) -> None:
    # py-amqp decodes such a body to text before Kombu sees it; the bytes must survive anyway.
    body = '[[], {"text": "café €"}, {}]'.encode(label, errors="replace")
    task_id = write_dead_letter(broker, Odd(label, body, "application/json", label))
    name = dlq_name(queue_name(SEND_EMAIL, broker.namespace))
    with Connection(broker.broker_url) as connection:
        dlq = DeadLetterQueue(connection, name, broker.namespace, QueueOptions.of(broker.settings))
        [peeked] = [letter for letter in dlq.peek() if letter.task_id == task_id]
        assert peeked.body == body
        drained = []
        for letter, message in dlq.drain(limit=1):
            drained.append(letter.body)
            message.ack()
        assert drained == [body]
