"""Email over SMTP: build the MIME message, deliver it, classify failures."""

from __future__ import annotations

import re
import smtplib
import ssl
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.utils import formatdate
from typing import Literal

from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from tasklane.contracts.notifier import EmailPayload
from tasklane.errors import PermanentError, TasklaneError, TransientError

# Headers this module sets itself; letting ``payload.headers`` replace them would allow
# spoofing the sender, leaking Bcc recipients or breaking the MIME structure.
_RESERVED_HEADERS = frozenset(
    {
        "from",
        "sender",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)
# RFC 5322 field names: printable US-ASCII except the colon.
_HEADER_NAME = re.compile(r"[!-9;-~]+")


@dataclass(frozen=True)
class SmtpConfig:
    """Where and how to connect; ``ssl_context`` defaults to ``ssl.create_default_context()``."""

    host: str
    port: int
    security: Literal["none", "starttls", "tls"] = "none"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 10.0
    local_hostname: str | None = None
    ssl_context: ssl.SSLContext | None = None


@dataclass(frozen=True)
class SmtpOutcome:
    """What the server accepted; ``refused`` maps recipient to ``"<code> <message>"``."""

    message_id: str
    accepted: list[str]
    refused: dict[str, str]


def build_message(
    payload: EmailPayload, *, sender: str, text: str | None, html: str | None, message_id: str
) -> EmailMessage:
    """Build the MIME message for ``payload``; Bcc recipients stay out of the headers.

    ``message_id`` is the same for every copy of one delivery (:mod:`notifier.identity`), so that
    a receiver recognises a duplicate from the at-least-once window.
    """
    if text is None and html is None:
        raise PermanentError("email has neither a text nor an HTML body")
    extra = _checked_headers(payload.headers)
    message = EmailMessage(policy=policy.SMTP)
    try:
        message["From"] = sender
        message["To"] = ", ".join(payload.to)
        if payload.cc:
            message["Cc"] = ", ".join(payload.cc)
        if payload.reply_to is not None:
            message["Reply-To"] = payload.reply_to
        message["Subject"] = payload.subject
        message["Date"] = formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = message_id
        message["MIME-Version"] = "1.0"
        for name, value in extra.items():
            message[name] = value
    except ValueError as exc:
        # The email package refuses malformed values (e.g. a line break in the subject).
        raise PermanentError(f"invalid email header: {exc}") from exc
    if text is not None and html is not None:
        message.set_content(text, subtype="plain", charset="utf-8")
        message.add_alternative(html, subtype="html", charset="utf-8")
    elif text is not None:
        message.set_content(text, subtype="plain", charset="utf-8")
    else:
        assert html is not None
        message.set_content(html, subtype="html", charset="utf-8")
    return message


def _checked_headers(headers: dict[str, str]) -> dict[str, str]:
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise PermanentError(f"invalid email header name {name!r}")
        if name.lower() in _RESERVED_HEADERS:
            raise PermanentError(f"header {name!r} is set by the notifier and cannot be overridden")
        if "\r" in value or "\n" in value:
            raise PermanentError(f"header {name!r} contains a line break")
    return headers


def recipients(payload: EmailPayload) -> list[str]:
    """To, Cc and Bcc addresses in that order, each once (compared case-insensitively)."""
    seen: set[str] = set()
    result: list[str] = []
    for address in [*payload.to, *payload.cc, *payload.bcc]:
        key = address.casefold()
        if key not in seen:
            seen.add(key)
            result.append(address)
    return result


def send(config: SmtpConfig, message: EmailMessage, recipients: list[str]) -> SmtpOutcome:
    """Deliver ``message`` to ``recipients``; raises TransientError or PermanentError.

    Traced as an ``smtp send`` CLIENT span carrying the server and the number of recipients:
    addresses are personal data, so neither they nor error texts (which may name them) go on it.
    """
    tracer = trace.get_tracer(__name__)
    with tracer.start_as_current_span(
        "smtp send", kind=SpanKind.CLIENT, record_exception=False, set_status_on_exception=False
    ) as span:
        if span.is_recording():
            span.set_attributes(
                {
                    "server.address": config.host,
                    "server.port": config.port,
                    "smtp.recipients.count": len(recipients),
                }
            )
        try:
            return _deliver(config, message, recipients)
        except Exception as exc:
            span.set_status(StatusCode.ERROR)
            span.set_attribute("error.type", type(exc).__name__)
            raise


def _deliver(config: SmtpConfig, message: EmailMessage, recipients: list[str]) -> SmtpOutcome:
    client: smtplib.SMTP | None = None
    try:
        # The constructors connect and read the greeting; on failure they close the socket
        # themselves, and they record the host name that TLS verifies the certificate against.
        client = _connect(config)
        client.ehlo_or_helo_if_needed()
        if config.security == "starttls":
            client.starttls(context=_tls_context(config))
            # The pre-TLS EHLO answer is discarded by starttls(); capabilities may differ now.
            client.ehlo_or_helo_if_needed()
        if config.username is not None:
            client.login(config.username, config.password or "")
        refused = client.send_message(message, to_addrs=recipients)
    except OSError as exc:  # smtplib.SMTPException is an OSError too
        raise _classify(exc, config) from exc
    except BaseException:
        # Cut off mid-conversation (a time limit, a worker's shutdown): a QUIT would wait up to
        # the timeout for a slow server's reply and hold the shutdown up. Drop the connection.
        if client is not None:
            client.close()
            client = None
        raise
    finally:
        if client is not None:
            _close(client)
    return SmtpOutcome(
        message_id=str(message["Message-ID"]),
        accepted=[address for address in recipients if address not in refused],
        refused={address: _reply(code, text) for address, (code, text) in refused.items()},
    )


def _tls_context(config: SmtpConfig) -> ssl.SSLContext:
    if config.ssl_context is not None:
        return config.ssl_context
    return ssl.create_default_context()


def _connect(config: SmtpConfig) -> smtplib.SMTP:
    if config.security == "tls":
        return smtplib.SMTP_SSL(
            config.host,
            config.port,
            local_hostname=config.local_hostname,
            timeout=config.timeout,
            context=_tls_context(config),
        )
    return smtplib.SMTP(
        config.host, config.port, local_hostname=config.local_hostname, timeout=config.timeout
    )


def _close(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except OSError:
        # QUIT fails when the server already hung up or was never reached; just drop the socket.
        client.close()


def _reply(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {text}"


def _classify(exc: OSError, config: SmtpConfig) -> TasklaneError:
    server = f"SMTP server {config.host}:{config.port}"
    if isinstance(exc, smtplib.SMTPConnectError):
        return TransientError(
            f"{server} refused the session: {_reply(exc.smtp_code, exc.smtp_error)}"
        )
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return TransientError(f"{server} closed the connection: {exc}")
    if isinstance(exc, smtplib.SMTPResponseException):
        # Covers authentication, sender and data errors: 4xx means "try again later" in SMTP.
        reply = _reply(exc.smtp_code, exc.smtp_error)
        if 400 <= exc.smtp_code < 500:
            return TransientError(f"{server} answered {reply}")
        return PermanentError(f"{server} answered {reply}")
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = {address: _reply(code, text) for address, (code, text) in exc.recipients.items()}
        detail = "; ".join(f"{address}: {reply}" for address, reply in replies.items())
        # A temporary refusal of any recipient makes a later attempt worthwhile.
        if any(400 <= code < 500 for code, _ in exc.recipients.values()):
            return TransientError(f"{server} refused all recipients for now: {detail}")
        return PermanentError(f"{server} refused all recipients: {detail}")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return PermanentError(f"{server} does not support what the configuration needs: {exc}")
    if isinstance(exc, smtplib.SMTPException):
        return PermanentError(f"{server}: {exc}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        # A certificate that does not verify will not verify on retry either.
        return PermanentError(f"{server} certificate rejected: {exc.verify_message}")
    return TransientError(f"cannot talk to {server}: {exc}")
