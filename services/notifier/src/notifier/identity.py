"""Stable identities of one delivery, so that a receiver can recognise a duplicate.

Delivery is at least once in one window: the server accepted the email (or the webhook answered
2xx) and the worker died before the idempotency record was written; the redelivered task sends it
again. That window cannot close for SMTP or HTTP, so every copy carries the same identity instead:
the email's ``Message-ID`` and the webhook's ``Idempotency-Key`` header.

The identity is derived from what the idempotency store deduplicates on: the contract's
idempotency value (for the notifier, the payload's ``idempotency_key`` when it is neither missing
nor empty), or else the task id, which every retry, redelivery and DLQ replay of one message keeps.
It is a SHA-256 digest (its first 128 bits, in 32 hex characters), so the key itself (which may
hold personal data) never reaches a receiver, the identity is safe in any header, and a
``Message-ID`` line stays within 78 characters for domains of up to 31.
"""

from __future__ import annotations

import hashlib
import re
from email.utils import parseaddr

#: Bumped only if the derivation changes; a new version gives every delivery a new identity.
_SCHEME = "tasklane.notifier.delivery.v1"
# RFC 5322 id-right restricted to host names: dot-separated labels of letters, digits, hyphens.
_DOMAIN = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")
_DIGEST = re.compile(r"[0-9a-f]{32}")


def delivery_key(*, namespace: str, task: str, idempotency_key: str | None, task_id: str) -> str:
    """The identity of one delivery, the same for every copy of it: 32 lowercase hex characters.

    The first 32 hex characters of
    ``sha256("tasklane.notifier.delivery.v1\\0<namespace>\\0<task>\\0key\\0<idempotency key>")``,
    or of ``...\\0task\\0<task id>`` when there is no idempotency key (UTF-8). The namespace and
    the task name are part of it because the idempotency store's records are scoped by them too.
    """
    if idempotency_key is not None:
        source = f"key\0{idempotency_key}"
    elif task_id:
        source = f"task\0{task_id}"
    else:
        raise ValueError("a delivery without an idempotency key needs its task id")
    # The variable-length, caller-chosen part comes last; nothing before it can hold a NUL.
    material = f"{_SCHEME}\0{namespace}\0{task}\0{source}"
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def message_id(key: str, domain: str) -> str:
    """The RFC 5322 ``Message-ID`` of the email with delivery key ``key``: ``<key@domain>``."""
    if not _DIGEST.fullmatch(key):
        raise ValueError(f"not a delivery key: {key!r}")
    if not _DOMAIN.fullmatch(domain):
        raise ValueError(f"not a host name usable in a Message-ID: {domain!r}")
    return f"<{key}@{domain}>"


def message_id_domain(configured: str | None, default_sender: str) -> str:
    """The right-hand side of every ``Message-ID``: ``configured``, else the sender's domain.

    The default sender (``TASKLANE_NOTIFIER_DEFAULT_SENDER``) rather than a payload's ``sender``,
    so that one key gives one ``Message-ID`` whatever the payloads say. ``localhost`` when the
    sender has no domain; an internationalised domain is used in its ASCII (IDNA) form.

    Raises:
        ValueError: the domain is not a host name (a ``Message-ID`` could not be well formed).
    """
    if configured is not None:
        domain, origin = configured, "the configured domain"
    else:
        _, at, domain = parseaddr(default_sender)[1].rpartition("@")
        domain = domain if at and domain else "localhost"
        origin = "the default sender's domain"
    try:
        ascii_domain = domain.strip().rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        ascii_domain = ""
    if not _DOMAIN.fullmatch(ascii_domain):
        raise ValueError(f"{origin} {domain!r} is not a host name usable in a Message-ID")
    return ascii_domain
