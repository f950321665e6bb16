"""notifier.identity: the Message-ID and Idempotency-Key every copy of one delivery shares."""

from __future__ import annotations

import hashlib
import re
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from notifier.identity import delivery_key, message_id, message_id_domain
from notifier.settings import NotifierSettings
from tasklane.contracts import SEND_EMAIL, SEND_IM
from tasklane.contracts.notifier import EmailPayload
from tasklane.errors import SettingsError
from tasklane.settings import load

TASK_ID = "5f0c2b1e-9d7a-4a43-8a55-0d6f3f0a9b11"


def key(
    idempotency_key: str | None = "invoice-42",
    *,
    namespace: str = "",
    task: str = "notifier.email.send",
    task_id: str = TASK_ID,
) -> str:
    return delivery_key(
        namespace=namespace, task=task, idempotency_key=idempotency_key, task_id=task_id
    )


def test_delivery_key_is_the_documented_digest() -> None:
    material = "tasklane.notifier.delivery.v1\0staging.\0notifier.email.send\0key\0invoice-42"
    expected = hashlib.sha256(material.encode()).hexdigest()[:32]
    assert key(namespace="staging.") == expected
    material = f"tasklane.notifier.delivery.v1\0\0notifier.im.send\0task\0{TASK_ID}"
    expected = hashlib.sha256(material.encode()).hexdigest()[:32]
    assert key(None, task="notifier.im.send") == expected


def test_the_same_key_gives_the_same_identity_whatever_the_task_id() -> None:
    # A retry, a redelivery and a second publish of the key: one identity for the receiver.
    assert key(task_id="a") == key(task_id="b") == key()
    assert re.fullmatch(r"[0-9a-f]{32}", key())


def test_without_a_key_the_task_id_decides() -> None:
    assert key(None) == key(None)
    assert key(None, task_id="other") != key(None)
    # A key that happens to equal a task id names a different delivery.
    assert key(TASK_ID) != key(None)


@pytest.mark.parametrize(
    "changed",
    [
        {"idempotency_key": "invoice-43"},
        {"idempotency_key": "Invoice-42"},
        {"idempotency_key": ""},
        {"namespace": "staging."},
        {"task": "notifier.im.send"},
    ],
)
def test_different_deliveries_get_different_identities(changed: dict[str, str]) -> None:
    base: dict[str, str] = {"namespace": "", "task": "notifier.email.send",
                            "idempotency_key": "invoice-42", "task_id": TASK_ID}  # fmt: skip
    assert delivery_key(**{**base, **changed}) != delivery_key(**base)


def test_the_key_itself_is_never_shown() -> None:
    secret_key = "ada@example.com-password-reset"
    identity = key(secret_key)
    assert "ada" not in identity and "example" not in identity


def test_a_keyless_delivery_needs_a_task_id() -> None:
    with pytest.raises(ValueError, match="task id"):
        key(None, task_id="")


def test_the_idempotency_value_of_the_contracts_is_the_payload_key() -> None:
    # What tasks.py passes in: the idempotency store's own value, None when missing or empty.
    payload = {"to": ["ada@example.com"], "subject": "s", "text": "t"}
    assert SEND_EMAIL.idempotency_value({**payload, "idempotency_key": "invoice-42"}) == (
        "invoice-42"
    )
    assert SEND_EMAIL.idempotency_value({**payload, "idempotency_key": ""}) is None
    assert SEND_EMAIL.idempotency_value(EmailPayload.model_validate(payload).model_dump()) is None
    assert SEND_IM.idempotency_key == ("idempotency_key",)


def test_message_id_is_a_well_formed_msg_id() -> None:
    identity = key()
    value = message_id(identity, "mail.example.com")
    assert value == f"<{identity}@mail.example.com>"
    raw = f"Message-ID: {value}\r\nSubject: x\r\n\r\nbody\r\n".encode()
    parsed = message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    header = parsed["Message-ID"]
    assert str(header) == value
    assert not header.defects  # the strict parser finds nothing wrong with it
    assert len(f"Message-ID: <{identity}@{'d' * 27}.com>") <= 78  # never folded up to 31


@pytest.mark.parametrize(
    ("identity", "domain"),
    [
        ("not-a-digest", "example.com"),
        ("A" * 32, "example.com"),
        ("a" * 32, "exa mple.com"),
        ("a" * 32, "example.com>"),
        ("a" * 32, ""),
        ("a" * 32, "-example.com"),
        ("a" * 32, "Example.com"),
    ],
)
def test_message_id_refuses_what_would_be_malformed(identity: str, domain: str) -> None:
    with pytest.raises(ValueError):
        message_id(identity, domain)


@pytest.mark.parametrize(
    ("configured", "sender", "expected"),
    [
        (None, "tasklane@localhost", "localhost"),
        (None, "Tasklane <noreply@Mail.Example.COM>", "mail.example.com"),
        (None, "tasklane", "localhost"),
        (None, "noreply@bücher.example", "xn--bcher-kva.example"),
        ("notify.example.org", "tasklane@localhost", "notify.example.org"),
        ("Notify.Example.ORG.", "noreply@example.com", "notify.example.org"),
    ],
)
def test_message_id_domain(configured: str | None, sender: str, expected: str) -> None:
    assert message_id_domain(configured, sender) == expected


@pytest.mark.parametrize(
    ("configured", "sender"),
    [("exa_mple.com", "a@example.com"), ("a..b", "a@example.com"), (None, "a@[127.0.0.1]")],
)
def test_message_id_domain_refuses_what_is_not_a_host_name(
    configured: str | None, sender: str
) -> None:
    with pytest.raises(ValueError, match="not a host name"):
        message_id_domain(configured, sender)


def test_settings_refuse_an_unusable_domain_at_load() -> None:
    assert load(NotifierSettings).message_id_domain is None
    assert load(NotifierSettings, message_id_domain="mail.example.net").message_id_domain == (
        "mail.example.net"
    )
    with pytest.raises(SettingsError, match="TASKLANE_NOTIFIER_MESSAGE_ID_DOMAIN"):
        load(NotifierSettings, message_id_domain="not a domain")
    # The sender's domain is checked too; the error names the variable that fixes it.
    with pytest.raises(SettingsError, match="TASKLANE_NOTIFIER_MESSAGE_ID_DOMAIN"):
        load(NotifierSettings, default_sender="ops@[10.0.0.1]")
