"""Payloads generated from a JSON Schema with hypothesis-jsonschema, on the installed Hypothesis.

hypothesis-jsonschema 0.23 builds objects with ``hypothesis.internal.conjecture.utils.many``
through its old interface, ``while elements.more(): ...``. Hypothesis 6.170 removed ``more()``:
``many`` is now a context manager that is iterated, so every object schema fails with
``AttributeError: 'many' object has no attribute 'more'``. :func:`from_schema` gives the library a
``many`` with the old interface on top of the new one (only inside hypothesis-jsonschema's module;
Hypothesis itself is left alone), and keeps only generated values that the schema's own validator
accepts: hypothesis-jsonschema ignores a regular expression's negative lookahead when it generates
(``(?!...)`` in the email and URL patterns), so a few values must be dropped.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import hypothesis_jsonschema._from_schema as _hjs_internals
from hypothesis import strategies as st
from hypothesis.internal.conjecture import utils as _conjecture_utils
from hypothesis_jsonschema import from_schema as _from_schema
from jsonschema import Draft202012Validator

_END = object()


class _SteppedMany:
    """``many`` with the ``more()`` / ``reject()`` interface of Hypothesis before 6.170."""

    def __init__(self, data: Any, **sizes: Any) -> None:
        self._many = _conjecture_utils.many(data, **sizes)
        self._many.__enter__()
        self._steps = iter(self._many)

    def more(self) -> bool:
        if next(self._steps, _END) is _END:
            self._many.__exit__(None, None, None)
            return False
        return True

    def reject(self, why: str | None = None) -> None:
        self._many.reject(why)


def _install() -> None:
    if hasattr(_conjecture_utils.many, "more"):
        return  # a Hypothesis with the old interface: nothing to adapt
    utils = SimpleNamespace(**vars(_conjecture_utils))
    utils.many = _SteppedMany
    _hjs_internals.cu = utils  # type: ignore[attr-defined]


_install()


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid against ``schema`` (JSON Schema 2020-12), from hypothesis-jsonschema."""
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return _from_schema(schema).filter(validator.is_valid)
