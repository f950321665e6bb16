"""How ``tasklane`` commands end: one red line and an exit code instead of a traceback.

Exit codes: 1 when the operation ran and failed (a task failed, no result in time, the broker
or Redis unreachable), 2 when the input or configuration is wrong.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from rich.console import Console
from rich.text import Text
from typer._click import Context, Parameter
from typer.core import TyperCommand, TyperGroup, TyperOption

from tasklane.contracts import REGISTRY
from tasklane.errors import (
    BrokerUnavailableError,
    TaskFailedError,
    TasklaneError,
    UnknownContractError,
)

P = ParamSpec("P")
R = TypeVar("R")

EXIT_FAILED = 1
EXIT_USAGE = 2


class CliError(TasklaneError):
    """Bad command-line input; reported like every other Tasklane error."""


def parse_json_object(text: str, where: str) -> dict[str, Any]:
    """A payload given on the command line: a JSON object, or a :class:`CliError` naming
    ``where`` it came from (``--json``, ``file.jsonl:3``)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{where}: invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CliError(f"{where}: the payload must be a JSON object, got {type(value).__name__}")
    return value


def unknown_task(name: str, known: Iterable[str] | None = None) -> str:
    """``unknown task 'x'; did you mean 'y'?``: the closest task names, or where to find them."""
    names = sorted(known if known is not None else (contract.name for contract in REGISTRY))
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if not close:
        return f"unknown task {name!r}; `tasklane contracts list` shows the known tasks"
    return f"unknown task {name!r}; did you mean {close[0]!r}?"


def console() -> Console:
    """A console for a command's output."""
    # Built per command: Rich resolves the terminal (or the test runner's stream) at that moment.
    return Console()


def fail(message: str, code: int) -> NoReturn:
    """Print ``message`` as one error line on stderr and exit with ``code``."""
    # soft_wrap keeps the message on one line however narrow the terminal is.
    error = Text(f"error: {' '.join(message.split())}", style="bold red")
    Console(stderr=True, soft_wrap=True).print(error)
    raise typer.Exit(code)


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn expected errors into one red line and an exit code instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except (TaskFailedError, BrokerUnavailableError) as exc:
            fail(str(exc), EXIT_FAILED)
        except UnknownContractError as exc:
            fail(unknown_task(exc.name), EXIT_USAGE)
        except TasklaneError as exc:
            fail(str(exc), EXIT_USAGE)
        except TimeoutError as exc:
            # Before OSError: TimeoutError is one, but it means "no result", not "no broker".
            fail(str(exc), EXIT_FAILED)
        except (OperationalError, RedisConnectionError, OSError) as exc:
            fail(f"broker or Redis unreachable: {exc}", EXIT_FAILED)

    return wrapper


def _plain_flags(params: list[Parameter]) -> list[Parameter]:
    """``params`` with every flag shown bare in ``--help``, as ``--yes``, not ``--yes <bool>``.

    Typer's Rich help prints each option's type, flags included (Typer 0.29 renders
    ``display_type_rich`` without looking at ``is_flag``), which reads as if ``--yes`` took a
    value. A flag's metavar is never used otherwise, so an empty one hides the type alone.
    """
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: Context) -> list[Parameter]:
        return _plain_flags(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Context) -> list[Parameter]:
        return _plain_flags(super().get_params(ctx))


class Commands(typer.Typer):
    """A Typer app whose every command ends through :func:`handle_errors`, and whose help shows
    flags as flags.

    Both are applied where a command is registered, so a new command cannot forget them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("cls", _Group)
        super().__init__(*args, **kwargs)

    def command(  # type: ignore[override]
        self, *args: Any, **kwargs: Any
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        kwargs.setdefault("cls", _Command)
        register = super().command(*args, **kwargs)

        def decorator(func: Callable[P, R]) -> Callable[P, R]:
            register(handle_errors(func))
            return func

        return decorator
