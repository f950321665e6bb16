"""Thin task functions: payload in, domain call, result out.

Both tasks retry on transient errors (connection problems, timeouts, SMTP 4xx, HTTP 5xx and 429
with ``Retry-After`` honoured) with exponential backoff and jitter, up to the contract's limit;
anything else is dead-lettered at once. Both deliver at most once per ``idempotency_key``.

Delivery is still at least once in one window (the server took the message, the worker died before
the idempotency record was written), so every copy of one delivery carries the same identity for
the receiver: the email's ``Message-ID``, the webhook's signed ``Idempotency-Key``. It is derived
(:mod:`notifier.identity`) from the key the idempotency store uses, the contract's
``idempotency_value`` (the payload's ``idempotency_key`` unless missing or empty), else from the
task id, which retries, redeliveries and DLQ replays keep.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any

import httpx
from celery import current_task

from notifier import identity, observe, smtp, webhooks
from notifier.app import app
from notifier.settings import NotifierSettings
from notifier.templates import TemplateRenderer
from tasklane.contracts import (
    SEND_EMAIL,
    SEND_IM,
    EmailPayload,
    EmailResult,
    IMPayload,
    IMResult,
    TaskContract,
)
from tasklane.errors import PermanentError
from tasklane.net.guard import NetGuardPolicy, guarded_client
from tasklane.settings import load

settings = app.settings
# Read when the worker starts, so that a bad value stops it with a clear error at once.
notifier_settings = load(NotifierSettings)
renderer = TemplateRenderer(notifier_settings.templates_dir)
webhook_policy = NetGuardPolicy.from_setting(notifier_settings.webhook_allow)
message_id_domain = identity.message_id_domain(
    notifier_settings.message_id_domain, notifier_settings.default_sender
)


@cache
def _http() -> httpx.Client:
    # One pooled client per worker process, created after the pool forks. Webhook URLs come from
    # upstream payloads: the guard refuses internal addresses (SSRF) and redirects are not followed.
    return guarded_client(
        webhook_policy, timeout=notifier_settings.webhook_timeout, follow_redirects=False
    )


def _delivery_key(contract: TaskContract[Any, Any], payload: EmailPayload | IMPayload) -> str:
    # The idempotency store's own value for this payload, so that the identity and the
    # deduplication agree on what "the same delivery" is.
    return identity.delivery_key(
        namespace=settings.namespace,
        task=contract.name,
        idempotency_key=contract.idempotency_value(payload.model_dump()),
        task_id=current_task.request.id,
    )


def _secret(name: str | None) -> str | None:
    if name is None:
        return None
    secret = notifier_settings.secrets.get(name)
    if secret is None:
        raise PermanentError(f"secret_ref {name!r} is not configured in the notifier")
    return secret.get_secret_value()


@app.implement(SEND_EMAIL)
def send_email(payload: EmailPayload) -> EmailResult:
    """Send one email over SMTP. Retries transient SMTP errors; at most once per idempotency key."""
    config = notifier_settings
    if payload.template is not None:
        body = renderer.render(payload.template, payload.context)
        text, html = body.text, body.html
    else:
        text, html = payload.text, payload.html
    sender = payload.sender or config.default_sender
    message_id = identity.message_id(_delivery_key(SEND_EMAIL, payload), message_id_domain)
    message = smtp.build_message(
        payload, sender=sender, text=text, html=html, message_id=message_id
    )
    with observe.delivery("email"):
        outcome = smtp.send(
            smtp.SmtpConfig(
                host=config.smtp_host,
                port=config.smtp_port,
                security=config.smtp_security,
                username=config.smtp_username,
                password=config.smtp_password.get_secret_value() if config.smtp_password else None,
                timeout=config.smtp_timeout,
            ),
            message,
            smtp.recipients(payload),
        )
    return EmailResult(
        message_id=outcome.message_id, accepted=outcome.accepted, refused=outcome.refused
    )


@app.implement(SEND_IM)
def send_im(payload: IMPayload) -> IMResult:
    """Post one IM webhook. Retries 5xx, 429 and timeouts; at most once per idempotency key."""
    request = webhooks.build_request(
        payload,
        _secret(payload.secret_ref),
        now=time.time(),
        idempotency_key=_delivery_key(SEND_IM, payload),
    )
    with observe.delivery(payload.channel):
        outcome = webhooks.post(_http(), request)
    return IMResult(
        channel=payload.channel, status_code=outcome.status_code, response=outcome.response
    )
