"""`tidings parked list | retry | discard`: the events handlers gave up on, and what an operator does next.

A parked event holds every later event of its key behind it (``workers.parking``). Once the cause is
fixed, ``retry`` releases a key and the worker owning its partition hands its events back to the
handler, oldest first; ``discard`` deletes them, and the key goes on without them. Keys are given as
text (UTF-8), as the relay writes stream ids.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from eventstore import DEFAULT_SCHEMA, PostgresEventStore
from workers.cli_options import EXIT_FAILED, EXIT_USAGE, AsJson, DatabaseUrl, Schema, fail, open_store
from workers.parking import ParkedEvent, ParkedEvents

__all__ = ["parked_app"]

parked_app = typer.Typer(
    help="Events handlers gave up on: list them, retry them after a fix, or discard them.",
    no_args_is_help=True,
)
out = Console()

Handler = Annotated[str, typer.Argument(help="The handler's name.")]
Key = Annotated[str | None, typer.Option(help="The key (stream id, as text) whose events to act on.")]
All = Annotated[bool, typer.Option("--all", help="Every parked event of the handler.")]


def _parked(database_url: str, schema: str) -> tuple[PostgresEventStore, ParkedEvents]:
    store = open_store(database_url, schema)
    return store, ParkedEvents(store)


def _text(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def _document(event: ParkedEvent) -> dict[str, object]:
    return {
        "id": event.id,
        "handler": event.handler,
        "topic": event.topic,
        "partition": event.partition,
        "offset": event.offset,
        "key": _text(event.key),
        "event_number": event.event_number,
        "stream_id": event.stream_id,
        "event_type": event.event_type,
        "error": event.error,
        "released": event.released,
        "parked_at": event.parked_at.isoformat(),
    }


@parked_app.command("list")
def list_command(
    handler: Annotated[str | None, typer.Option(help="Only this handler's parked events.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many events.")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    database_url: DatabaseUrl = "",
    schema: Schema = DEFAULT_SCHEMA,
) -> None:
    """Parked events, oldest first per handler and partition.

    Example: [bold]tidings parked list --handler balances[/]
    """
    store, parked = _parked(database_url, schema)
    with store:
        events = parked.list(handler, limit)
    if as_json:
        out.print_json(json.dumps([_document(event) for event in events]))
        return
    if not events:
        out.print("no parked events" + (f" for {handler!r}" if handler else ""))
        return
    table = Table(title=f"{len(events)} parked event(s)")
    for column in (
        "id",
        "handler",
        "where",
        "key",
        "event",
        "stream",
        "type",
        "error",
        "released",
        "parked at",
    ):
        table.add_column(column, overflow="fold")  # wrapped, never cut: operators copy these values
    for e in events:
        table.add_row(
            str(e.id),
            e.handler,
            f"{e.topic}[{e.partition}]@{e.offset}",
            _text(e.key),
            str(e.event_number) if e.event_number is not None else "-",
            e.stream_id or "-",
            e.event_type or "-",
            e.error,
            "yes" if e.released else "no",
            e.parked_at.isoformat(timespec="seconds"),
        )
    out.print(table)


@parked_app.command("retry")
def retry_command(
    handler: Handler,
    key: Key = None,
    every: All = False,
    database_url: DatabaseUrl = "",
    schema: Schema = DEFAULT_SCHEMA,
    as_json: AsJson = False,
) -> None:
    """Release parked events (one key's, or all): the worker hands them back to the handler, in order.

    Fix the cause first: an event that fails again is parked again with the rest of its key.
    Example: [bold]tidings parked retry balances --key account-42[/]
    """
    if (key is None) == (not every):
        raise fail("give either --key KEY or --all", EXIT_USAGE)
    store, parked = _parked(database_url, schema)
    with store:
        count = parked.release(handler, key.encode() if key is not None else None)
    which = f"key {key!r}" if key is not None else "every key"
    if not count:
        raise fail(f"nothing parked for {handler!r} ({which})", EXIT_FAILED)
    if as_json:
        out.print_json(json.dumps({"handler": handler, "key": key, "released": count}))
        return
    out.print(
        f"released {count} parked event(s) of {handler!r} ({which}); the worker owning their partitions "
        "hands them back to the handler"
    )


@parked_app.command("discard")
def discard_command(
    handler: Handler,
    key: Key = None,
    ids: Annotated[
        list[int] | None, typer.Option("--id", help="A parked event's id, from `list` (repeatable).")
    ] = None,
    every: All = False,
    database_url: DatabaseUrl = "",
    schema: Schema = DEFAULT_SCHEMA,
    as_json: AsJson = False,
) -> None:
    """Delete parked events (one key's, some by id, or all): the handler never sees them.

    Later events of a key whose parked events are all gone are handled live again.
    Example: [bold]tidings parked discard balances --id 17 --id 18[/]
    """
    if sum((key is not None, bool(ids), every)) != 1:
        raise fail("give one of --key KEY, --id ID (repeatable) or --all", EXIT_USAGE)
    store, parked = _parked(database_url, schema)
    with store:
        count = parked.discard(handler, key=key.encode() if key is not None else None, ids=ids or None)
    which = f"key {key!r}" if key is not None else f"ids {ids}" if ids else "every key"
    if not count:
        raise fail(f"nothing parked for {handler!r} ({which})", EXIT_FAILED)
    if as_json:
        out.print_json(json.dumps({"handler": handler, "key": key, "ids": ids, "discarded": count}))
        return
    out.print(f"discarded {count} parked event(s) of {handler!r} ({which})")
