"""notifier.smtp against a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from notifier.smtp import SmtpConfig, SmtpOutcome, build_message, recipients, send
from tasklane.contracts.notifier import EmailPayload
from tasklane.errors import PermanentError, TransientError

SENDER = "Tasklane <noreply@example.com>"
MESSAGE_ID = "<0123456789abcdef0123456789abcdef@example.com>"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    login: bytes | None


@dataclass
class RecordingHandler:
    """aiosmtpd handler keeping every message; ``rcpt_replies`` refuses chosen recipients."""

    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    received: list[Received] = field(default_factory=list)

    async def handle_RCPT(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if self.data_reply is not None:
            return self.data_reply
        # Line endings as a mailbox would store them, so bodies compare with what was sent.
        content = envelope.content.replace(b"\r\n", b"\n")
        parsed = message_from_bytes(content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        self.received.append(
            Received(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                parsed,
                # session.ssl covers STARTTLS only; implicit TLS shows on the transport.
                tls=server.transport.get_extra_info("ssl_object") is not None,
                login=login,
            )
        )
        return "250 Message accepted"


StartServer = Callable[..., int]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """Start an aiosmtpd Controller with the given handler and SMTP options; returns its port."""
    controllers: list[Controller] = []

    def start(handler: RecordingHandler, **options: Any) -> int:
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, **options)
        controller.start()
        controllers.append(controller)
        return port

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],  # fmt: skip
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def client_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


def authenticate(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data == (b"robot", b"s3cret")
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


def payload(**fields: Any) -> EmailPayload:
    defaults: dict[str, Any] = {"to": ["ada@example.com"], "subject": "Hi", "text": "x"}
    return EmailPayload.model_validate(defaults | fields)


def deliver(port: int, email: EmailPayload, **config: Any) -> SmtpOutcome:
    message = build_message(
        email, sender=SENDER, text=email.text, html=email.html, message_id=MESSAGE_ID
    )
    return send(
        SmtpConfig(host="127.0.0.1", port=port, local_hostname="client.example.com", **config),
        message,
        recipients(email),
    )


def test_plain_text_message_is_delivered(start_server: StartServer) -> None:
    handler = RecordingHandler()
    port = start_server(handler)

    outcome = deliver(port, payload(subject="Welcome aboard", text="Hello Ada\nGrüße"))

    [mail] = handler.received
    assert mail.mail_from == "noreply@example.com"
    assert mail.rcpt_tos == ["ada@example.com"]
    assert mail.message.get_content_type() == "text/plain"
    assert mail.message.get_content_charset() == "utf-8"
    assert mail.message.get_content() == "Hello Ada\nGrüße\n"
    assert mail.message["Subject"] == "Welcome aboard"
    assert mail.message["From"] == SENDER
    assert mail.message["To"] == "ada@example.com"
    assert mail.message["MIME-Version"] == "1.0"
    assert mail.tls is False
    assert outcome == SmtpOutcome(
        message_id=mail.message["Message-ID"], accepted=["ada@example.com"], refused={}
    )


def test_text_and_html_become_multipart_alternative(start_server: StartServer) -> None:
    handler = RecordingHandler()
    port = start_server(handler)

    deliver(port, payload(text="plain body", html="<p>html body</p>"))

    [mail] = handler.received
    assert mail.message.get_content_type() == "multipart/alternative"
    parts = list(mail.message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert isinstance(parts[0], EmailMessage) and isinstance(parts[1], EmailMessage)
    assert parts[0].get_content() == "plain body\n"
    assert parts[1].get_content() == "<p>html body</p>\n"


def test_html_only_is_text_html(start_server: StartServer) -> None:
    handler = RecordingHandler()
    port = start_server(handler)

    deliver(port, payload(text=None, html="<p>only html</p>"))

    [mail] = handler.received
    assert mail.message.get_content_type() == "text/html"
    assert mail.message.get_content() == "<p>only html</p>\n"


def test_cc_in_headers_bcc_only_in_envelope(start_server: StartServer) -> None:
    handler = RecordingHandler()
    port = start_server(handler)
    email = payload(
        to=["ada@example.com"],
        cc=["bob@example.com", "ADA@example.com"],
        bcc=["eve@example.com"],
    )

    outcome = deliver(port, email)

    [mail] = handler.received
    assert mail.message["Cc"] == "bob@example.com, ADA@example.com"
    assert "Bcc" not in mail.message
    assert b"eve@example.com" not in mail.message.as_bytes()
    # The duplicate (differing only in case) is sent once.
    assert mail.rcpt_tos == ["ada@example.com", "bob@example.com", "eve@example.com"]
    assert outcome.accepted == mail.rcpt_tos


def test_no_cc_header_without_cc(start_server: StartServer) -> None:
    handler = RecordingHandler()
    port = start_server(handler)

    deliver(port, payload())

    assert "Cc" not in handler.received[0].message


def test_message_id_date_reply_to_and_extra_headers(start_server: StartServer) -> None:
    handler = RecordingHandler()
    port = start_server(handler)
    email = payload(
        reply_to="support@example.com",
        headers={"List-Unsubscribe": "<mailto:unsubscribe@example.com>"},
    )

    outcome = deliver(port, email)

    message = handler.received[0].message
    assert message["Message-ID"] == MESSAGE_ID
    assert outcome.message_id == MESSAGE_ID
    sent = parsedate_to_datetime(message["Date"])
    assert sent.utcoffset() is not None and sent.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs(sent.timestamp() - time.time()) < 60
    assert message["Reply-To"] == "support@example.com"
    assert message["List-Unsubscribe"] == "<mailto:unsubscribe@example.com>"


def test_every_build_of_one_delivery_has_its_message_id() -> None:
    # Not generated per attempt: a copy sent again after a crash must carry the same ID.
    email = payload()
    first = build_message(email, sender=SENDER, text="a", html=None, message_id=MESSAGE_ID)
    second = build_message(email, sender=SENDER, text="a", html=None, message_id=MESSAGE_ID)
    assert first["Message-ID"] == second["Message-ID"] == MESSAGE_ID


@pytest.mark.parametrize("name", ["Bcc", "from", "TO", "Cc", "Subject", "Date", "Message-ID"])
def test_extra_headers_cannot_override_envelope_headers(name: str) -> None:
    email = payload(headers={name: "attacker@evil.com"})
    with pytest.raises(PermanentError, match="cannot be overridden"):
        build_message(email, sender=SENDER, text="x", html=None, message_id=MESSAGE_ID)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Tag": "a\r\nBcc: attacker@evil.com"},
        {"X-Tag": "a\nb"},
        {"X-Tag\r\nBcc": "attacker@evil.com"},
        {"X Tag": "a"},
        {"X-Tag:": "a"},
    ],
)
def test_header_injection_is_refused(headers: dict[str, str]) -> None:
    with pytest.raises(PermanentError):
        build_message(
            payload(headers=headers), sender=SENDER, text="x", html=None, message_id=MESSAGE_ID
        )


def test_line_break_in_subject_is_refused() -> None:
    email = payload(subject="Hi\r\nBcc: attacker@evil.com")
    with pytest.raises(PermanentError, match="invalid email header"):
        build_message(email, sender=SENDER, text="x", html=None, message_id=MESSAGE_ID)


def test_message_without_body_is_refused() -> None:
    with pytest.raises(PermanentError, match="neither"):
        build_message(payload(), sender=SENDER, text=None, html=None, message_id=MESSAGE_ID)


def test_recipients_keeps_order_and_drops_duplicates() -> None:
    email = payload(
        to=["a@example.com", "b@example.com"],
        cc=["b@example.com", "c@example.com"],
        bcc=["A@example.com", "d@example.com"],
    )
    assert recipients(email) == ["a@example.com", "b@example.com", "c@example.com", "d@example.com"]


def test_partial_refusal_is_reported(start_server: StartServer) -> None:
    handler = RecordingHandler(rcpt_replies={"gone@example.com": "550 5.1.1 No such user"})
    port = start_server(handler)

    outcome = deliver(port, payload(to=["ada@example.com", "gone@example.com"]))

    assert outcome.accepted == ["ada@example.com"]
    assert outcome.refused == {"gone@example.com": "550 5.1.1 No such user"}
    assert handler.received[0].rcpt_tos == ["ada@example.com"]


@pytest.mark.parametrize(
    ("replies", "error"),
    [
        ({"ada@example.com": "450 4.2.1 Mailbox busy"}, TransientError),
        ({"ada@example.com": "550 5.1.1 No such user"}, PermanentError),
        (
            {"ada@example.com": "550 5.1.1 No such user", "bob@example.com": "451 4.3.0 Later"},
            TransientError,
        ),
    ],
)
def test_all_recipients_refused(
    start_server: StartServer, replies: dict[str, str], error: type[Exception]
) -> None:
    handler = RecordingHandler(rcpt_replies=replies)
    port = start_server(handler)

    with pytest.raises(error) as caught:
        deliver(port, payload(to=list(replies)))

    assert type(caught.value) is error
    assert f"127.0.0.1:{port}" in str(caught.value)
    for reply in replies.values():
        assert reply in str(caught.value)
    assert handler.received == []


@pytest.mark.parametrize(
    ("reply", "error"),
    [("451 4.3.0 Queue full", TransientError), ("554 5.7.1 Spam detected", PermanentError)],
)
def test_data_refused(start_server: StartServer, reply: str, error: type[Exception]) -> None:
    port = start_server(RecordingHandler(data_reply=reply))

    with pytest.raises(error) as caught:
        deliver(port, payload())

    assert type(caught.value) is error
    assert reply in str(caught.value)


@pytest.fixture
def raw_server() -> Iterator[Callable[[bytes], int]]:
    """A TCP server that sends ``greeting`` to its one client and hangs up; returns its port."""
    threads: list[threading.Thread] = []
    listeners: list[socket.socket] = []

    def start(greeting: bytes) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def serve() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.sendall(greeting)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return int(listener.getsockname()[1])

    yield start
    for thread in threads:
        thread.join(timeout=5)
    for listener in listeners:
        listener.close()


@pytest.mark.parametrize(
    ("greeting", "expected"),
    [(b"", "closed the connection"), (b"554 5.3.2 Not now\r\n", "554 5.3.2 Not now")],
)
def test_greeting_failures_are_transient(
    raw_server: Callable[[bytes], int], greeting: bytes, expected: str
) -> None:
    port = raw_server(greeting)

    with pytest.raises(TransientError, match=expected):
        deliver(port, payload())


#: Sends one email to the port in argv[1]; SIGTERM raises SystemExit, as in a pool process.
CUT_OFF_CLIENT = """
import signal, sys
from notifier.smtp import SmtpConfig, build_message, send
from tasklane.contracts.notifier import EmailPayload

def stop(signum, frame):
    raise SystemExit(0)

signal.signal(signal.SIGTERM, stop)
payload = EmailPayload(to=["ada@example.com"], subject="Hi", text="Hello")
config = SmtpConfig(host="127.0.0.1", port=int(sys.argv[1]), timeout=60.0)
message = build_message(
    payload, sender="noreply@example.com", text="Hello", html=None, message_id="<1@example.com>"
)
send(config, message, ["ada@example.com"])
"""


def test_a_delivery_cut_off_hangs_up_without_waiting_on_a_quit() -> None:
    # The server greets, answers EHLO, then never answers MAIL FROM. The client is cut off there
    # (SIGTERM, as a worker's shutdown cuts its pool processes): it must hang up at once, not
    # send QUIT and wait up to its timeout for an answer that does not come.
    listener = socket.create_server(("127.0.0.1", 0))
    heard: list[bytes] = []
    waiting = threading.Event()

    def serve() -> None:
        connection, _ = listener.accept()
        with connection, connection.makefile("rb") as lines:
            connection.sendall(b"220 slow.example.com ready\r\n")
            heard.append(lines.readline())
            connection.sendall(b"250 slow.example.com\r\n")
            heard.append(lines.readline())
            waiting.set()
            heard.extend(iter(lines.readline, b""))  # everything until the client hangs up

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    port = int(listener.getsockname()[1])
    client = subprocess.Popen([sys.executable, "-c", CUT_OFF_CLIENT, str(port)])
    try:
        assert waiting.wait(60), "the client never sent MAIL FROM"  # see its stderr above
        client.terminate()
        server.join(timeout=120)
    finally:
        client.kill()
        client.wait(30)
        listener.close()

    commands = [line.split(b" ", 1)[0].split(b":", 1)[0].strip().upper() for line in heard]
    assert commands[:2] == [b"EHLO", b"MAIL"]
    assert b"QUIT" not in commands, heard
    assert not server.is_alive()  # the client hung up


def test_connection_refused_is_transient() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(TransientError, match=f"127.0.0.1:{port}"):
        deliver(port, payload(), timeout=2.0)


def test_starttls_and_login(
    start_server: StartServer, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    handler = RecordingHandler()
    port = start_server(
        handler,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=authenticate,
        auth_require_tls=True,
    )

    outcome = deliver(
        port,
        payload(),
        security="starttls",
        ssl_context=client_tls,
        username="robot",
        password="s3cret",
    )

    [mail] = handler.received
    assert mail.tls is True
    assert mail.login == b"robot"
    assert outcome.accepted == ["ada@example.com"]


def test_wrong_password_is_permanent(
    start_server: StartServer, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    handler = RecordingHandler()
    port = start_server(
        handler,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=authenticate,
        auth_require_tls=True,
    )

    with pytest.raises(PermanentError, match="535"):
        deliver(
            port,
            payload(),
            security="starttls",
            ssl_context=client_tls,
            username="robot",
            password="wrong",
        )
    assert handler.received == []


def test_login_without_tls_is_permanent(
    start_server: StartServer, server_tls: ssl.SSLContext
) -> None:
    # The server offers AUTH only after STARTTLS, so a plain session cannot log in.
    handler = RecordingHandler()
    port = start_server(
        handler,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=authenticate,
        auth_require_tls=True,
    )

    with pytest.raises(PermanentError, match="AUTH"):
        deliver(port, payload(), username="robot", password="s3cret")
    assert handler.received == []


def test_plain_session_against_required_starttls_is_permanent(
    start_server: StartServer, server_tls: ssl.SSLContext
) -> None:
    handler = RecordingHandler()
    port = start_server(handler, tls_context=server_tls, require_starttls=True)

    with pytest.raises(PermanentError, match="530"):
        deliver(port, payload())
    assert handler.received == []


def test_starttls_not_offered_is_permanent(
    start_server: StartServer, client_tls: ssl.SSLContext
) -> None:
    handler = RecordingHandler()
    port = start_server(handler)

    with pytest.raises(PermanentError, match="(?i)starttls"):
        deliver(port, payload(), security="starttls", ssl_context=client_tls)
    assert handler.received == []


def test_untrusted_certificate_is_permanent(
    start_server: StartServer, server_tls: ssl.SSLContext
) -> None:
    handler = RecordingHandler()
    port = start_server(handler, tls_context=server_tls, require_starttls=True)

    # The default context trusts the system CAs only, not the self-signed test certificate.
    with pytest.raises(PermanentError, match="certificate"):
        deliver(port, payload(), security="starttls")
    assert handler.received == []


def test_implicit_tls(
    start_server: StartServer, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    handler = RecordingHandler()
    port = start_server(handler, ssl_context=server_tls)

    deliver(port, payload(), security="tls", ssl_context=client_tls)

    [mail] = handler.received
    assert mail.tls is True
