"""The task contract: everything publishers and workers must agree on about one task type."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from tasklane.errors import TransientError, UnknownContractError

PayloadT = TypeVar("PayloadT", bound=BaseModel)
ResultT = TypeVar("ResultT", bound=BaseModel)


#: Each model's validator is built on its first use, not when its module is imported: an upstream
#: imports every contract and publishes a few (bench/imports.py).
_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Payload(BaseModel):
    """Base for payload models: unknown fields are refused so typos never pass silently."""

    model_config = _MODEL_CONFIG


class Result(BaseModel):
    """Base for result models."""

    model_config = _MODEL_CONFIG


@dataclass(frozen=True)
class RetryPolicy:
    """Which errors retry and how long to wait: exponential backoff with full jitter.

    Attributes:
        retry_on: exception types that trigger a retry; anything else is dead-lettered at once.
        max_retries: retries after the first attempt; then the message is dead-lettered.
        backoff_base: seconds before the first retry.
        backoff_max: upper bound of any computed delay.
        jitter: draw the delay uniformly from ``[computed / 2, computed]`` to spread retries.
    """

    retry_on: tuple[type[BaseException], ...] = (TransientError, ConnectionError, TimeoutError)
    max_retries: int = 5
    backoff_base: float = 2.0
    backoff_max: float = 300.0
    jitter: bool = True

    def retries(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth another attempt under this policy."""
        return isinstance(exc, self.retry_on)

    def delay(self, retries_done: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retries_done + 1``.

        A server's ``Retry-After`` is a floor: the delay is never shorter than it asked for.
        """
        computed = min(self.backoff_max, self.backoff_base * 2.0**retries_done)
        if self.jitter:
            computed = random.uniform(computed / 2, computed)
        if retry_after is not None:
            computed = max(computed, min(retry_after, self.backoff_max))
        return computed


@dataclass(frozen=True)
class TaskContract(Generic[PayloadT, ResultT]):
    """One task type: its name, queue, payload and result models and its run-time policy.

    The queue is the dedicated queue of this task type; its dead-letter queue is derived from it
    (see :mod:`tasklane.wire.routing`). Time limits are seconds; ``rate_limit`` uses Celery's syntax
    (``"10/s"``) and applies per worker node, not across the pool.
    """

    name: str
    queue: str
    payload: type[PayloadT]
    result: type[ResultT]
    description: str = ""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    soft_time_limit: float = 30.0
    time_limit: float = 60.0
    rate_limit: str | None = None
    idempotency_key: tuple[str, ...] = ()
    priority: int = 0

    def __post_init__(self) -> None:
        if self.name.count(".") < 2:
            raise ValueError(f"contract name {self.name!r} must read <service>.<area>.<action>")
        if not self.soft_time_limit < self.time_limit:
            raise ValueError(f"{self.name}: soft_time_limit must be below time_limit")
        if not 0 <= self.priority <= 9:
            raise ValueError(f"{self.name}: priority must be within 0..9")
        unknown = set(self.idempotency_key) - set(self.payload.model_fields)
        if unknown:
            raise ValueError(f"{self.name}: idempotency_key names unknown fields {sorted(unknown)}")

    @property
    def service(self) -> str:
        """The worker service that implements this contract (the first name segment)."""
        return self.name.split(".", 1)[0]

    def idempotency_value(self, payload: Mapping[str, Any]) -> str | None:
        """The idempotency key of one validated payload, or ``None`` when the contract has none."""
        if not self.idempotency_key:
            return None
        parts = [str(payload.get(name)) for name in self.idempotency_key]
        if all(part in ("None", "") for part in parts):
            return None
        return "|".join(parts)


class ContractRegistry:
    """Contracts by task name. Immutable once built; build a new one to extend it."""

    def __init__(self, contracts: tuple[TaskContract[Any, Any], ...]) -> None:
        by_name: dict[str, TaskContract[Any, Any]] = {}
        for contract in contracts:
            if contract.name in by_name:
                raise ValueError(f"contract {contract.name!r} is registered twice")
            by_name[contract.name] = contract
        self._by_name = by_name

    def __getitem__(self, name: str) -> TaskContract[Any, Any]:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownContractError(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[TaskContract[Any, Any]]:
        return iter(sorted(self._by_name.values(), key=lambda c: c.name))

    def __len__(self) -> int:
        return len(self._by_name)

    def for_service(self, service: str) -> tuple[TaskContract[Any, Any], ...]:
        """The contracts one worker service implements, in name order."""
        return tuple(c for c in self if c.service == service)

    def services(self) -> tuple[str, ...]:
        """Every service that implements at least one contract."""
        return tuple(sorted({c.service for c in self}))

    def extended(self, *contracts: TaskContract[Any, Any]) -> ContractRegistry:
        """A new registry with ``contracts`` added (tests and plugins use this)."""
        return ContractRegistry((*self._by_name.values(), *contracts))
