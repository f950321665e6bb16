"""The gateway's settings, read from ``TASKLANE_GATEWAY_*`` variables (docs/gateway.md#settings)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasklane.errors import SettingsError
from tasklane.settings import load


class GatewaySettings(BaseSettings):
    """Where the gateway listens, who may publish and the limits of one request."""

    model_config = SettingsConfigDict(env_prefix="TASKLANE_GATEWAY_", extra="ignore", frozen=True)

    host: str = Field(default="0.0.0.0", description="Address to listen on.")
    port: int = Field(default=8080, ge=1, le=65535, description="Port of every endpoint.")
    tokens_file: Path | None = Field(
        default=None,
        description="YAML or JSON file of the publishers and their hashed tokens; required.",
    )
    idempotency_window: int = Field(
        default=86_400, ge=1, description="Seconds an Idempotency-Key's answer is remembered."
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest request body accepted (413 above)."
    )
    max_batch: int = Field(
        default=1000, ge=1, le=100_000, description="Most payloads in one batch request."
    )

    shutdown_delay: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description=(
            "Seconds between SIGTERM and closing the listener, /readyz answering 503, so that "
            "load balancers stop sending first."
        ),
    )

    def require_tokens_file(self) -> Path:
        """The tokens file, or a clear error naming the variable to set."""
        if self.tokens_file is None:
            raise SettingsError(
                "no gateway tokens file: set TASKLANE_GATEWAY_TOKENS_FILE "
                "(`tasklane gateway token` makes an entry)"
            )
        return self.tokens_file


def load_gateway_settings(**overrides: object) -> GatewaySettings:
    """The gateway settings from the environment; one-line :class:`SettingsError` when invalid."""
    return load(GatewaySettings, **overrides)
