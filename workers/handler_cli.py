"""`tidings handler restart NAME`: start again a handler its error policy stopped, once the cause is fixed.

The worker holding the stopped handler (it stayed up, reporting the handler not ready) notices the
request within a second and starts the handler from the event it stopped at.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

from eventstore import DEFAULT_SCHEMA
from workers.cli_options import EXIT_FAILED, AsJson, DatabaseUrl, Schema, fail, open_store
from workers.handler_states import HandlerStates

__all__ = ["handler_app"]

handler_app = typer.Typer(help="Handlers stopped by their error policy: restart them.", no_args_is_help=True)
out = Console()


@handler_app.command("restart")
def restart_command(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The handler's name (its consumer group).")],
    database_url: DatabaseUrl = "",
    schema: Schema = DEFAULT_SCHEMA,
    as_json: AsJson = False,
) -> None:
    """Restart the stopped handler NAME: its worker starts it again from the event it stopped at.

    Exit 1 if NAME is not stopped (nothing to restart). `tidings status` shows stopped handlers.
    Example: [bold]tidings handler restart balances --schema bank[/]
    """
    store = open_store(database_url, schema)
    with store:
        requested = HandlerStates(store).request_restart(name)
    if not requested:
        raise fail(f"handler {name!r} is not stopped: nothing to restart", EXIT_FAILED)
    if as_json:
        out.print_json(json.dumps({"handler": name, "restart_requested": True}))
    else:
        out.print(f"restart of {name!r} requested: its worker starts it again within a second")
