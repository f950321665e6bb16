"""Notifier settings: SMTP server, default sender, templates and webhook secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from notifier.identity import message_id_domain
from tasklane.net.guard import NetGuardPolicy
from tasklane.settings import checked_by

DEFAULT_TEMPLATES = Path(__file__).parent / "templates"


class NotifierSettings(BaseSettings):
    """Read from ``TASKLANE_NOTIFIER_*``; secrets are never part of a task payload."""

    model_config = SettingsConfigDict(env_prefix="TASKLANE_NOTIFIER_", extra="ignore", frozen=True)

    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_security: Literal["none", "starttls", "tls"] = "none"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout: float = Field(default=10.0, gt=0)
    default_sender: str = "tasklane@localhost"
    message_id_domain: str | None = Field(
        default=None,
        validate_default=True,
        description=(
            "Domain of every Message-ID (<sha256 of the delivery key>@<domain>); the domain of "
            "default_sender when unset."
        ),
    )
    templates_dir: Path = DEFAULT_TEMPLATES
    webhook_timeout: float = Field(default=10.0, gt=0)
    webhook_allow: Annotated[str, checked_by(NetGuardPolicy.from_setting)] = Field(
        default="",
        description=(
            "Comma-separated networks and host names webhooks may reach although they are private "
            "(e.g. '10.20.0.0/16,hooks.internal'); every other private address is refused."
        ),
    )
    secrets: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='Signing secrets by name, as JSON: {"dingtalk-ops": "SEC..."}.',
    )

    @field_validator("templates_dir")
    @classmethod
    def _existing_directory(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value

    @field_validator("message_id_domain")
    @classmethod
    def _usable_message_id_domain(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Checked (unset too) so that a worker whose Message-IDs would be malformed does not start;
        # the error names this variable, the one to set when the sender's domain does not fit.
        sender = info.data.get("default_sender")
        if sender is not None:
            message_id_domain(value, sender)
        return value
