"""How ``tasklane`` commands end: one red line and an exit code instead of a traceback.

Exit codes: 1 when the operation ran and failed (a task failed, no result in time, the broker
or Redis unreachable), 2 when the input or configuration is wrong.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, NoReturn, ParamSpec, TypeVar

import typer
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from rich.console import Console
from rich.text import Text

from tasklane.errors import BrokerUnavailableError, TaskFailedError, TasklaneError

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
        except TasklaneError as exc:
            fail(str(exc), EXIT_USAGE)
        except TimeoutError as exc:
            # Before OSError: TimeoutError is one, but it means "no result", not "no broker".
            fail(str(exc), EXIT_FAILED)
        except (OperationalError, RedisConnectionError, OSError) as exc:
            fail(f"broker or Redis unreachable: {exc}", EXIT_FAILED)

    return wrapper


class Commands(typer.Typer):
    """A Typer app whose every command ends through :func:`handle_errors`.

    The boundary is applied where a command is registered, so a new command cannot forget it.
    """

    def command(  # type: ignore[override]
        self, *args: Any, **kwargs: Any
    ) -> Callable[[Callable[P, R]], Callable[P, R]]:
        register = super().command(*args, **kwargs)

        def decorator(func: Callable[P, R]) -> Callable[P, R]:
            register(handle_errors(func))
            return func

        return decorator
