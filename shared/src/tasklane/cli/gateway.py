"""``tasklane gateway``: serve the HTTP ingestion gateway; ``tasklane gateway token``: mint a token.

The server's modules (FastAPI, uvicorn) load only when it starts. Design: docs/gateway.md.
"""

from __future__ import annotations

from typing import Annotated

import typer

from tasklane.cli.errors import Commands, handle_errors
from tasklane.gateway.settings import load_gateway_settings
from tasklane.gateway.tokens import mint
from tasklane.settings import load_settings

gateway_app = Commands(
    help="Serve the HTTP ingestion gateway (no subcommand), or mint a publisher token.",
    invoke_without_command=True,
)


@gateway_app.callback()
def gateway(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on [TASKLANE_GATEWAY_HOST].")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", min=1, max=65535, help="Port [TASKLANE_GATEWAY_PORT]."),
    ] = None,
) -> None:
    """Serve POST /v1/tasks/{task}, its batch form and GET /v1/tasks/{id} until SIGTERM."""
    if ctx.invoked_subcommand is not None:
        return
    handle_errors(_serve)(host, port)


def _serve(host: str | None, port: int | None) -> None:
    from tasklane.gateway.server import serve

    overrides: dict[str, object] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    serve(load_settings(), load_gateway_settings(**overrides))


@gateway_app.command("token")
def token(
    name: Annotated[str, typer.Option("--name", help="The publisher's name (metrics, logs).")],
    contracts: Annotated[
        list[str],
        typer.Option("--contracts", help="Task name pattern it may publish (fnmatch); repeat."),
    ],
    rate: Annotated[float, typer.Option("--rate", min=0.001, help="Tasks per second.")] = 100.0,
    burst: Annotated[int, typer.Option("--burst", min=1, help="Bucket size.")] = 200,
) -> None:
    """Print a new random token once, and the tokens-file entry (its hash) to paste."""
    secret, entry = mint(name, contracts, rate, burst)
    typer.echo(f"# token for {name} (shown once; give it to the publisher, store it nowhere):")
    typer.echo(f"# {secret}")
    typer.echo("# add to the tokens file (TASKLANE_GATEWAY_TOKENS_FILE):")
    typer.echo(entry, nl=False)
