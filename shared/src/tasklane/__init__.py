"""Tasklane: typed task contracts, routing, publishing and a hardened Celery app factory."""

from __future__ import annotations

from tasklane.contracts import (
    REGISTRY,
    ContractRegistry,
    Payload,
    Result,
    RetryPolicy,
    TaskContract,
)
from tasklane.errors import (
    PayloadTooLargeError,
    PayloadValidationError,
    PermanentError,
    SettingsError,
    TaskFailedError,
    TasklaneError,
    TransientError,
    UnknownContractError,
)
from tasklane.publish import Publisher, TaskHandle, publish
from tasklane.settings import Settings, load_settings
from tasklane.worker.app import create_app
from tasklane.worker.task import implement

__all__ = [
    "ContractRegistry",
    "Payload",
    "PayloadTooLargeError",
    "PayloadValidationError",
    "PermanentError",
    "Publisher",
    "REGISTRY",
    "Result",
    "RetryPolicy",
    "Settings",
    "SettingsError",
    "TaskContract",
    "TaskFailedError",
    "TaskHandle",
    "TasklaneError",
    "TransientError",
    "UnknownContractError",
    "create_app",
    "implement",
    "load_settings",
    "publish",
]
