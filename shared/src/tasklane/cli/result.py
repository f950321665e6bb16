"""``tasklane result ID``: a task's state and its result, or its error and dead-letter reason.

It reads the result backend through the gateway's :class:`~tasklane.gateway.results.TaskStates`,
so it shows what ``GET /v1/tasks/{id}`` shows. Output and exit codes: docs/operations.md.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from tasklane.cli.backends import require_results
from tasklane.cli.errors import EXIT_FAILED, console
from tasklane.cli.tables import AsJson, print_json
from tasklane.contracts import REGISTRY
from tasklane.gateway.results import TaskStates
from tasklane.publish import ResultReader
from tasklane.settings import load_settings

#: Said of an id the result backend holds nothing for; Celery calls that state PENDING.
NOT_FOUND = "no such task or not started yet"


def result(
    task_id: Annotated[str, typer.Argument(help="The task id `submit` or the gateway printed.")],
    as_json: AsJson = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until the task succeeds or fails.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.0, help="Seconds --wait waits.")
    ] = 30.0,
) -> None:
    """Show a task's state and its result, or its error and dead-letter reason.

    Exit status 0 when it succeeded or is still running, 1 when it failed or is not known.
    """
    settings = load_settings()
    require_results(settings)
    reader = ResultReader(settings)
    try:
        if wait:
            _wait(reader, task_id, timeout)
        states = TaskStates(reader, REGISTRY)
        view = _view(states, task_id, states.read(task_id))
    finally:
        reader.close()
    if as_json:
        print_json(view)
    else:
        _print(view)
    if view["state"] == "FAILURE" or not view["found"]:
        raise typer.Exit(EXIT_FAILED)


def _wait(reader: ResultReader, task_id: str, timeout: float) -> None:
    from celery.exceptions import TimeoutError as ResultTimeout  # not a builtin subclass

    with console().status(f"waiting up to {timeout:g}s for {task_id}"):
        try:
            reader.result(task_id).get(
                timeout=timeout, propagate=False, disable_sync_subtasks=False
            )
        except ResultTimeout:
            raise TimeoutError(
                f"{task_id}: no result in {timeout:g}s ({NOT_FOUND}, or still running)"
            ) from None


def _view(states: TaskStates, task_id: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The gateway's status document, plus ``found``: whether the backend knows the task."""
    name = meta.get("name")  # the workers store extended results: the task's name included
    task = name if isinstance(name, str) else None
    found = meta.get("status", "PENDING") != "PENDING"
    if task not in REGISTRY and meta.get("status") == "SUCCESS":
        # TaskStates types a result by its contract; without one it is shown as stored.
        view = {**states.view(task_id, "", {}), "state": "SUCCESS", "result": meta.get("result")}
    else:
        view = states.view(task_id, task or "", meta)
    return {**view, "task": task, "found": found}


def _print(view: dict[str, Any]) -> None:
    # Plain lines: never wrapped, and brackets in an error message are not read as markup.
    typer.echo(f"task id: {view['task_id']}")
    if not view["found"]:
        typer.echo(f"state: PENDING ({NOT_FOUND}: the result backend has no record of it)")
        return
    typer.echo(f"task: {view['task'] or '?'}")
    typer.echo(f"state: {view['state']}")
    if view["state"] == "SUCCESS":
        typer.echo("result:")
        typer.echo(json.dumps(view["result"], indent=2, ensure_ascii=False, default=str))
    if view["error"]:
        error = view["error"]
        typer.secho(f"error: {error['type']}: {error['message']}", fg="red")
    if view["dead_letter_reason"]:
        typer.echo(f"dead-letter reason: {view['dead_letter_reason']}")
