"""A payload checked against its contract, with every problem located: shared by the publisher,
the worker, Beat and the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

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
