"""Tasklane for Django: publish tasks now, when the caller's transaction commits, or through a
transactional outbox that a relay sends.

Add ``"tasklane.contrib.django"`` to ``INSTALLED_APPS`` and settings to ``TASKLANE = {...}``.
Importing this package loads neither Django's models nor a broker client (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasklane.contrib.django.publishing import publish, publish_on_commit

_LAZY = {
    "publish": "tasklane.contrib.django.publishing",
    "publish_on_commit": "tasklane.contrib.django.publishing",
}

__all__ = ["publish", "publish_on_commit"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tasklane.contrib.django' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
