"""`tidings outbox list | retry | discard`: the commands to other applications Kafka refused.

The command sender (``eventstore.command_sender``) sets aside a command Kafka can never accept (larger
than its message limit, a destination that is no topic name), with its own error; later commands of the
same target wait behind it, other targets go on (``eventstore.command_outbox``). Once the cause is fixed
(the topic's and the producer's limits raised, say), ``retry`` gives the commands to the sender again;
``discard`` deletes them, and their target's later commands go on without them.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from eventstore import DEFAULT_SCHEMA
from eventstore.command_outbox import NotSetAside, discard_set_aside, retry_set_aside, set_aside
from workers.cli_options import EXIT_FAILED, EXIT_USAGE, AsJson, DatabaseUrl, Schema, fail, open_store

__all__ = ["outbox_app"]

outbox_app = typer.Typer(
    help="Commands to other applications that Kafka refused: list them, retry them after a fix, or "
    "discard them.",
    no_args_is_help=True,
)
out = Console()

Ids = Annotated[list[int] | None, typer.Option("--id", help="An outbox id, from `list` (repeatable).")]
All = Annotated[bool, typer.Option("--all", help="Every command set aside.")]


@outbox_app.command("list")
def list_command(
    limit: Annotated[int, typer.Option(min=1, help="At most this many commands.")] = 1000,
    as_json: AsJson = False,
    database_url: DatabaseUrl = "",
    schema: Schema = DEFAULT_SCHEMA,
) -> None:
    """The commands set aside, oldest first, each with the error Kafka gave.

    Example: [bold]tidings outbox list --schema orders[/]
    """
    with open_store(database_url, schema) as store:
        commands = set_aside(store, limit)
    if as_json:
        out.print_json(
            json.dumps(
                [
                    {
                        "id": c.id,
                        "destination": c.destination,
                        "command_type": c.command_type,
                        "key": c.partition_key,
                        "error": c.error,
                        "created_at": c.created_at.isoformat(),
                        "failed_at": c.failed_at.isoformat(),
                    }
                    for c in commands
                ]
            )
        )
        return
    if not commands:
        out.print("no command set aside")
        return
    table = Table(title=f"{len(commands)} command(s) set aside")
    for column in ("id", "destination", "type", "key", "error", "set aside at"):
        table.add_column(column, overflow="fold")
    for c in commands:
        table.add_row(  # names and Kafka's errors as they are, never read as markup
            str(c.id),
            escape(c.destination),
            escape(c.command_type),
            escape(c.partition_key or "-"),
            escape(c.error or "-"),
            c.failed_at.isoformat(timespec="seconds"),
        )
    out.print(table)


def _which(ids: list[int] | None, every: bool, database_url: str, schema: str) -> list[int]:
    if bool(ids) == every:
        raise fail("give either --id ID (repeatable) or --all", EXIT_USAGE)
    if ids:
        return ids
    with open_store(database_url, schema) as store:
        return [c.id for c in set_aside(store, 1_000_000)]


@outbox_app.command("retry")
def retry_command(
    ids: Ids = None,
    every: All = False,
    database_url: DatabaseUrl = "",
    schema: Schema = DEFAULT_SCHEMA,
    as_json: AsJson = False,
) -> None:
    """Give commands set aside to the sender again (fix the cause first: refused again, set aside again).

    Example: [bold]tidings outbox retry --id 17[/]
    """
    chosen = _which(ids, every, database_url, schema)
    with open_store(database_url, schema) as store:
        try:
            count = retry_set_aside(store, chosen)
        except NotSetAside as exc:
            raise fail(f"{exc} (see `tidings outbox list`); nothing retried", EXIT_FAILED) from exc
    if not count:
        raise fail("no such command set aside", EXIT_FAILED)
    if as_json:
        out.print_json(json.dumps({"retried": count}))
        return
    out.print(f"{count} command(s) given to the sender again")


@outbox_app.command("discard")
def discard_command(
    ids: Ids = None,
    every: All = False,
    database_url: DatabaseUrl = "",
    schema: Schema = DEFAULT_SCHEMA,
    as_json: AsJson = False,
) -> None:
    """Delete commands set aside: never sent; their targets' later commands go on without them.

    Example: [bold]tidings outbox discard --id 17[/]
    """
    chosen = _which(ids, every, database_url, schema)
    with open_store(database_url, schema) as store:
        try:
            count = discard_set_aside(store, chosen)
        except NotSetAside as exc:
            raise fail(f"{exc} (see `tidings outbox list`); nothing discarded", EXIT_FAILED) from exc
    if not count:
        raise fail("no such command set aside", EXIT_FAILED)
    if as_json:
        out.print_json(json.dumps({"discarded": count}))
        return
    out.print(f"{count} command(s) discarded")
