"""Tasklane: typed task contracts, a publisher for upstreams and a hardened Celery app for workers.

``import tasklane`` loads what an upstream needs to publish (contracts, the publisher); settings
and the worker side (``create_app``, ``TasklaneApp``) are loaded on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasklane.contracts import (
    REGISTRY,
    ContractRegistry,
    Payload,
    Result,
    RetryPolicy,
    TaskContract,
)
from tasklane.errors import (
    BrokerUnavailableError,
    PayloadTooLargeError,
    PayloadValidationError,
    PermanentError,
    SettingsError,
    TaskFailedError,
    TasklaneError,
    TransientError,
    UnknownContractError,
)
from tasklane.publish import PublishedTasks, Publisher, TaskHandle, publish

if TYPE_CHECKING:
    from tasklane.settings import Settings, load_settings
    from tasklane.worker.app import TasklaneApp, create_app

#: Names imported when first asked for: Celery's worker side, and pydantic-settings (which costs
#: more to import than the rest of the publisher together).
_LAZY = {
    "Settings": "tasklane.settings",
    "load_settings": "tasklane.settings",
    "TasklaneApp": "tasklane.worker.app",
    "create_app": "tasklane.worker.app",
}

__all__ = [
    "BrokerUnavailableError",
    "ContractRegistry",
    "Payload",
    "PayloadTooLargeError",
    "PayloadValidationError",
    "PermanentError",
    "PublishedTasks",
    "Publisher",
    "REGISTRY",
    "Result",
    "RetryPolicy",
    "Settings",
    "SettingsError",
    "TaskContract",
    "TaskFailedError",
    "TaskHandle",
    "TasklaneApp",
    "TasklaneError",
    "TransientError",
    "UnknownContractError",
    "create_app",
    "load_settings",
    "publish",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tasklane' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
