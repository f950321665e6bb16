"""A payload checked against its contract, with every problem located: shared by the publisher,
the worker, Beat and the CLI."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from tasklane.contracts.base import TaskContract
from tasklane.errors import PayloadValidationError, Problem

PayloadT = TypeVar("PayloadT", bound=BaseModel)


def problems_of(exc: ValidationError) -> list[Problem]:
    """Pydantic's errors as :class:`Problem` s, paths kept as they are (``("to", 0)``)."""
    return [Problem(tuple(err["loc"]), err["msg"]) for err in exc.errors()]


def validate_payload(
    contract: TaskContract[PayloadT, Any], payload: BaseModel | Mapping[str, Any]
) -> PayloadT:
    """The payload as its contract's model, or :class:`PayloadValidationError` locating why not."""
    if isinstance(payload, contract.payload):
        return payload
    data = payload.model_dump() if isinstance(payload, BaseModel) else payload
    try:
        return contract.payload.model_validate(data)
    except ValidationError as exc:
        raise PayloadValidationError(contract.name, problems_of(exc)) from None


def validate_payloads(
    contract: TaskContract[PayloadT, Any],
    payloads: Sequence[BaseModel | Mapping[str, Any]],
    *,
    first: int = 0,
) -> list[PayloadT]:
    """Many payloads as their contract's models, validated in one call.

    Raises :class:`PayloadValidationError` with the problems of the first invalid payload, each
    naming it by its index (``[2]``, counted from ``first``).
    """
    model = contract.payload
    data = [
        p.model_dump() if isinstance(p, BaseModel) and not isinstance(p, model) else p
        for p in payloads
    ]
    try:
        return _list_adapter(model).validate_python(data)
    except ValidationError as exc:
        problems = problems_of(exc)
        index = min(int(problem.location[0]) for problem in problems)
        raise PayloadValidationError(
            contract.name,
            [
                replace(problem, location=problem.location[1:], item=f"[{first + index}]")
                for problem in problems
                if problem.location[0] == index
            ],
        ) from None


@functools.cache
def _list_adapter(model: type[BaseModel]) -> TypeAdapter[list[Any]]:
    # One validator for a list of payloads: a call per batch rather than per payload.
    return TypeAdapter(list[model])  # type: ignore[valid-type]
