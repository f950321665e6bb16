"""Contracts of the notifier service: email over SMTP and IM webhooks."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from tasklane.contracts.base import Payload, Result, RetryPolicy, TaskContract
from tasklane.contracts.fields import END, EmailAddress, Matches, WebUrl
from tasklane.errors import TransientError

TEMPLATE_PATTERN = rf"^[a-z0-9][a-z0-9_/-]*{END}"


def _present(name: str) -> dict[str, Any]:
    """Schema of an object whose ``name`` is there and not null (both kinds are strings)."""
    return {"required": [name], "properties": {name: {"type": "string"}}}


class EmailPayload(Payload):
    """One email. Give ``template`` (rendered by the worker) or inline ``text``/``html``."""

    # The schema of _one_body_source.
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [_present("template"), {"anyOf": [_present("text"), _present("html")]}]
        }
    )

    to: list[EmailAddress] = Field(min_length=1, max_length=100)
    cc: list[EmailAddress] = Field(default_factory=list, max_length=100)
    bcc: list[EmailAddress] = Field(default_factory=list, max_length=100)
    sender: EmailAddress | None = Field(
        default=None, description="From address; the worker's configured sender when omitted."
    )
    reply_to: EmailAddress | None = None
    subject: str = Field(min_length=1, max_length=998)
    text: str | None = Field(default=None, description="Inline plain-text body, sent as is.")
    html: str | None = Field(default=None, description="Inline HTML body, sent as is.")
    template: Annotated[str, Matches(TEMPLATE_PATTERN, "not a template name")] | None = Field(
        default=None,
        description="Template name: the worker renders <name>.txt and/or <name>.html.",
    )
    context: dict[str, Any] = Field(
        default_factory=dict, description="Variables for the template (autoescaped in HTML)."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra headers such as List-Unsubscribe."
    )
    idempotency_key: str | None = Field(
        default=None, max_length=200, description="Deliver at most once per key."
    )

    @model_validator(mode="after")
    def _one_body_source(self) -> EmailPayload:
        inline = self.text is not None or self.html is not None
        if inline == (self.template is not None):
            raise ValueError("give either template or inline text/html, exactly one of them")
        return self


class EmailResult(Result):
    """What the SMTP server accepted."""

    message_id: str
    accepted: list[str]
    refused: dict[str, str] = Field(default_factory=dict)
    deduplicated: bool = Field(
        default=False, description="True when an earlier delivery with the same key was reused."
    )


class IMPayload(Payload):
    """One instant message to a DingTalk robot, a Slack incoming webhook or a JSON webhook."""

    channel: Literal["dingtalk", "slack", "webhook"]
    url: WebUrl
    text: str = Field(min_length=1, max_length=20_000)
    title: str | None = Field(default=None, max_length=200)
    secret_ref: str | None = Field(
        default=None,
        description=(
            "Name of a signing secret configured in the notifier (never the secret itself): "
            "DingTalk's robot secret, or the HMAC key of a generic webhook."
        ),
    )
    idempotency_key: str | None = Field(default=None, max_length=200)


class IMResult(Result):
    """The webhook's answer."""

    channel: str
    status_code: int
    response: str = Field(default="", description="First 500 characters of the answer.")
    deduplicated: bool = False


# No rate limits on delivery: Celery's per-node token bucket with Redis and prefetch 1 delivered
# about 1.5 emails/s under a "50/s" limit (measured); providers throttle with 429/4xx, retried.
DELIVERY_RETRY = RetryPolicy(
    retry_on=(TransientError, ConnectionError, TimeoutError),
    max_retries=8,
    backoff_base=2.0,
    backoff_max=600.0,
)

SEND_EMAIL: TaskContract[EmailPayload, EmailResult] = TaskContract(
    name="notifier.email.send",
    queue="notifier.email",
    payload=EmailPayload,
    result=EmailResult,
    description="Send one email over SMTP.",
    retry=DELIVERY_RETRY,
    soft_time_limit=30.0,
    time_limit=45.0,
    idempotency_key=("idempotency_key",),
    priority=5,
)

SEND_IM: TaskContract[IMPayload, IMResult] = TaskContract(
    name="notifier.im.send",
    queue="notifier.im",
    payload=IMPayload,
    result=IMResult,
    description="Post one message to an IM webhook (DingTalk, Slack, generic JSON).",
    retry=DELIVERY_RETRY,
    soft_time_limit=20.0,
    time_limit=30.0,
    idempotency_key=("idempotency_key",),
    priority=5,
)
