"""How a dead letter's body is shown: any bytes under any content-encoding label, never unpickled.

A body is shown as JSON or text only when its label names a real text encoding and the bytes
decode under it; anything else (pickles, compressed bytes, unknown or lying labels, codecs such
as base64 or zlib that are not text encodings) is shown as its size and a bounded hex/base64
preview. The property tests need Hypothesis; the sweeps below them cover every codec Python
knows without it.
"""

from __future__ import annotations

import base64
import codecs
import encodings.aliases
import gzip
import io
import json
import pickle
import random
import zlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from tasklane.cli import main
from tasklane.cli.main import _json_ascii, _letter_json, _print_body, _print_json, hexdump
from tasklane.wire.deadletter import DeadLetter
from tasklane.wire.protocol import encode_body

PICKLE = "application/x-python-serialize"
EMAIL = {"to": ["ada@example.com"], "subject": "Hello", "text": "Hi Ada"}
#: Labels Python knows as codecs that are not text encodings, plus Kombu's "binary".
NOT_TEXT = ["binary", "ascii-8bit", "base64", "base_64", "zlib", "bz2", "hex", "rot13", "rot_13",
            "uu", "quopri", "gzip", "x-no-such-codec", "[/bold]", "\x00", "\ud800",
            "utf-8\x00"]  # fmt: skip
#: Every codec Python ships (by module name), text encodings or not, and awkward labels.
LABELS = sorted(
    set(encodings.aliases.aliases.values()) | set(NOT_TEXT)
    | {"", " ", "UTF-8", "utf8", "latin-1", "utf-16", "utf-32", "utf-7", "utf-8-sig", "idna",
       "punycode", "unicode_escape", "raw_unicode_escape", "undefined", "charmap"}
)  # fmt: skip
CONTENT_TYPES = ["application/json", PICKLE, "text/plain", "application/octet-stream", ""]


def letter(
    body: bytes, content_encoding: str, content_type: str = "application/json"
) -> DeadLetter:
    return DeadLetter(
        queue="t.notifier.email",
        reason="undecodable",
        error_type="ContentDisallowed",
        error="Refusing to deserialize",
        attempts=1,
        body=body,
        content_type=content_type,
        content_encoding=content_encoding,
        headers={"task": "notifier.email.send", "id": "0b5e7a"},
        properties={},
    )


@contextmanager
def pickle_forbidden() -> Iterator[None]:
    """Any unpickling in the block fails the test."""
    refuse = mock.Mock(side_effect=AssertionError("a dead letter was unpickled"))
    with (
        mock.patch.object(pickle, "loads", refuse),
        mock.patch.object(pickle, "load", refuse),
        mock.patch.object(pickle, "Unpickler", refuse),
    ):
        yield


def strict_console() -> tuple[Console, io.BytesIO]:
    """A console writing UTF-8 strictly, as a terminal does: unprintable text raises."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
    return Console(file=stream, width=120, no_color=True), raw


def is_text_encoding(label: str) -> bool:
    if not label.strip():
        return True  # no label means UTF-8
    if label.strip().lower() in ("binary", "ascii-8bit"):
        return False
    try:
        return bool(getattr(codecs.lookup(label.strip()), "_is_text_encoding", True))
    except (LookupError, ValueError):
        return False


def check_view(dead: DeadLetter) -> dict[str, Any]:
    """The invariants of :meth:`DeadLetter.body_view` for one letter, and the display's."""
    with pickle_forbidden():
        view = dead.body_view()
        console, raw = strict_console()
        _print_body(console, dead)
        _print_json(console, dead.headers)
        data = _letter_json("t.notifier.email.dlq", dead)
        rendered = json.dumps(data, default=str, ensure_ascii=_json_ascii(data))
    assert isinstance(view, dict)
    assert json.loads(rendered)["body_bytes"] == len(dead.body)
    assert view["body_bytes"] == len(dead.body)
    form = view["body_format"]
    assert form in ("json", "text", "binary", "empty")
    if form in ("binary", "empty"):
        preview = dead.body[: DeadLetter.PREVIEW_BYTES]
        assert view["body"] is None
        assert base64.b64decode(view["body_base64"]) == preview
        assert view["body_preview_bytes"] == len(preview)
        assert view["body_truncated"] == (len(dead.body) > DeadLetter.PREVIEW_BYTES)
        assert dead.payload() == dead.body
        if form == "binary":
            assert view["body_note"]
            hex_lines = hexdump(preview)
            assert hex_lines[0] in raw.getvalue().decode("utf-8")
    else:
        # Shown as text only under a real text encoding that decodes the bytes exactly.
        encoding = dead.text_encoding()
        assert encoding is not None and is_text_encoding(dead.content_encoding)
        text = dead.body.decode(encoding)
        assert view["body_base64"] is None
        assert view["body"] == (json.loads(text) if form == "json" else text)
        assert form != "json" or dead.content_type == "application/json"
    if not is_text_encoding(dead.content_encoding):
        assert form in ("binary", "empty")
    return view


# --------------------------------------------------------------------------- the cases named


@pytest.mark.parametrize(
    ("body", "label"),
    [
        (gzip.compress(encode_body(EMAIL)), "gzip"),
        (base64.b64encode(encode_body(EMAIL)), "base64"),
        (zlib.compress(encode_body(EMAIL)), "zlib"),
        (b"uryyb", "rot13"),
        (b"7b7d", "hex"),
        (b'"hello"', "x-no-such-codec"),
        (b'"hello"', "binary"),
    ],
)
def test_labels_that_are_not_text_encodings_show_bytes(body: bytes, label: str) -> None:
    view = check_view(letter(body, label))

    assert view["body_format"] == "binary"
    assert view["body_note"] == f"content encoding {label!r} is not a text encoding"
    assert base64.b64decode(view["body_base64"]) == body[: DeadLetter.PREVIEW_BYTES]


@pytest.mark.parametrize("body", [b"NaN", b"[Infinity]", b'{"x": -Infinity}'])
def test_nan_and_infinity_are_text_not_json(body: bytes) -> None:
    # Python's json reads them; JSON has no such values, and `dlq show --json` must stay JSON.
    view = check_view(letter(body, "utf-8"))

    assert view["body_format"] == "text"
    assert view["body"] == body.decode()
    assert view["body_note"] == "not valid JSON"
    json.loads(json.dumps(view), parse_constant=lambda name: pytest.fail(f"{name} in the view"))


def test_a_pickle_is_shown_as_bytes_and_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"

    class Touch:
        def __reduce__(self) -> tuple[Any, tuple[Path]]:
            return Path.touch, (marker,)

    body = pickle.dumps(Touch())
    view = check_view(letter(body, "binary", PICKLE))

    assert view["body_format"] == "binary"
    assert base64.b64decode(view["body_base64"]) == body[: DeadLetter.PREVIEW_BYTES]
    assert not marker.exists()


def test_json_keeps_showing_as_json() -> None:
    dead = letter(encode_body(EMAIL), "utf-8")
    view = check_view(dead)

    assert view["body_format"] == "json"
    assert view["body"][1] == EMAIL
    assert view["body_note"] == ""
    assert dead.payload()[1] == EMAIL
    assert check_view(letter(encode_body(EMAIL), ""))["body_format"] == "json"  # Kombu: utf-8


def test_text_that_does_not_decode_under_its_label_is_bytes_with_a_note() -> None:
    body = b'[[], {"text": "caf\xe9"}, {}]'  # latin-1 labelled utf-8
    view = check_view(letter(body, "utf-8"))

    assert view["body_format"] == "binary"
    assert view["body_note"] == "not valid utf-8 text"
    assert base64.b64decode(view["body_base64"]) == body
    # The same bytes under their true label are text, decoded exactly.
    assert check_view(letter(body, "latin-1"))["body"] == [[], {"text": "café"}, {}]


def test_malformed_json_is_text_with_a_note() -> None:
    view = check_view(letter(b'[[], {"to": [', "utf-8"))

    assert (view["body_format"], view["body"], view["body_note"]) == (
        "text",
        '[[], {"to": [',
        "not valid JSON",
    )


def test_empty_body() -> None:
    view = check_view(letter(b"", "utf-8"))

    assert view["body_format"] == "empty"
    assert (view["body"], view["body_base64"], view["body_bytes"]) == (None, "", 0)


def test_the_preview_is_bounded() -> None:
    body = bytes(range(256)) * 4
    view = check_view(letter(body, "binary"))

    assert view["body_truncated"] is True
    assert base64.b64decode(view["body_base64"]) == body[: DeadLetter.PREVIEW_BYTES]
    assert letter(body, "binary").body_view(preview=16)["body_preview_bytes"] == 16


def test_lone_surrogates_are_printed_escaped() -> None:
    # Valid JSON naming a lone surrogate, and utf-16 bytes decoding to one.
    json_view = check_view(letter(b'["\\ud800"]', "utf-8"))
    assert json_view["body"] == ["\ud800"]
    assert check_view(letter(b"\x00\xd8", "utf-16-le"))["body_format"] == "binary"


def test_hexdump_rows() -> None:
    assert hexdump(b"") == []
    assert hexdump(b"AB\x00[red]") == [
        "00000000  41 42 00 5b 72 65 64 5d" + " " * 24 + "  |AB.[red]|"
    ]
    rows = hexdump(bytes(range(40)))
    assert [row[:8] for row in rows] == ["00000000", "00000010", "00000020"]


# --------------------------------------------------------------------------- sweeps


@pytest.mark.parametrize("label", LABELS)
def test_every_python_codec_label_is_shown_safely(label: str) -> None:
    samples = random.Random(ascii(label)).randbytes  # reproducible per label
    bodies = [
        b"",
        encode_body(EMAIL),
        pickle.dumps(((), EMAIL, {})),
        "café ☃".encode("utf-16"),
        b"\\ud800 \\x",
        samples(7),
        samples(300),
    ]
    for body in bodies:
        for content_type in ("application/json", "text/plain"):
            check_view(letter(body, label, content_type))


def test_dlq_show_renders_every_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tasklane dlq show`` (human and ``--json``) exits 0 on each kind of body."""
    letters = [
        letter(pickle.dumps(((), EMAIL, {})), "binary", PICKLE),
        letter(b'[[], {"text": "caf\xe9"}, {}]', "utf-8"),
        letter(b'["\\ud800"]', "utf-8"),
        letter(b"", ""),
        letter(bytes(range(256)), "\x1b[2J", "application/octet-stream"),
        letter(encode_body(EMAIL), "utf-8"),
    ]

    class FakeQueue:
        def __init__(self, *args: Any) -> None:
            pass

        def peek(self, limit: int) -> list[DeadLetter]:
            return letters[:limit]

    def connect(settings: Any) -> AbstractContextManager[None]:
        return nullcontext()

    monkeypatch.setattr(main, "DeadLetterQueue", FakeQueue)
    monkeypatch.setattr(main, "connect", connect)
    monkeypatch.setenv("TASKLANE_NAMESPACE", "t.")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    for index, dead in enumerate(letters):
        args = ["dlq", "show", "notifier.email", "--index", str(index)]
        shown = CliRunner().invoke(main.app, args)
        assert shown.exit_code == 0, (index, shown.output, shown.exception)
        assert f"Body              {len(dead.body)} bytes" in shown.output
        as_json = CliRunner().invoke(main.app, [*args, "--json"])
        assert as_json.exit_code == 0, (index, as_json.output, as_json.exception)
        data = json.loads(as_json.stdout)
        assert data == json.loads(
            json.dumps(_letter_json("t.notifier.email.dlq", dead), default=str)
        )
    escaped = CliRunner().invoke(main.app, ["dlq", "show", "notifier.email", "--index", "4"])
    assert "\x1b" not in escaped.output
    assert "'\\x1b[2J'" in escaped.output


# --------------------------------------------------------------------------- properties

labels = st.one_of(st.text(max_size=40), st.sampled_from(LABELS))
bodies = st.one_of(
    st.binary(max_size=400),
    st.builds(
        lambda text, encoding: text.encode(encoding, errors="ignore"),
        st.text(max_size=100),
        st.sampled_from(["utf-8", "utf-16", "latin-1", "utf-7", "cp1252"]),
    ),
    st.builds(encode_body, st.dictionaries(st.text(max_size=8), st.text(max_size=20))),
)


@settings(max_examples=400, deadline=None)
@given(body=bodies, label=labels, content_type=st.sampled_from(CONTENT_TYPES))
def test_any_bytes_under_any_label_never_crash(body: bytes, label: str, content_type: str) -> None:
    check_view(letter(body, label, content_type))


@given(st.binary(max_size=200))
def test_hexdump_holds_exactly_the_bytes(data: bytes) -> None:
    rows = hexdump(data)
    hexes = "".join(row[10:57].replace(" ", "") for row in rows)
    assert bytes.fromhex(hexes) == data
    assert all(row.isascii() and row.isprintable() for row in rows)
