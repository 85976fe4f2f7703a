"""`tidings store rebase`: make a store moved to another PostgreSQL cluster number events again.

A dump/restore or a logical-replication switchover into a cluster whose transaction ids are lower leaves
the store ordered by the old cluster's ids, and numbering stops (eventstore/rebase.py). ``tidings migrate``
re-bases as it finishes; this command does it alone, for a store switched under running processes.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import typer
from rich.console import Console

from eventstore import DEFAULT_SCHEMA, ConfigurationError, EventStoreError, StoreUnavailable, rebase
from workers.cli_options import EXIT_FAILED, EXIT_USAGE, AsJson, DatabaseUrl, Schema, fail, migrated_store

__all__ = ["store_app"]

store_app = typer.Typer(
    help="Operations on the event store itself.\n\nExample: [bold]tidings store rebase --schema bank[/]",
    no_args_is_help=True,
)
out = Console()


@store_app.command("rebase")
def rebase_command(
    database_url: DatabaseUrl = "", schema: Schema = DEFAULT_SCHEMA, as_json: AsJson = False
) -> None:
    """Re-base a store moved from another PostgreSQL cluster, so that its events are numbered again.

    Events committed but not numbered at the move are numbered first, in their old order; nothing
    already numbered changes its number. It takes about the time of an UPDATE of every event, most of it
    while appends go on; they wait for the last step only. A store that was not moved is left as it is.
    Safe to run from several places at once.

    Example: [bold]DATABASE_URL=postgresql://app@new-db/app tidings store rebase --schema bank --json[/]
    """
    try:
        report = rebase(migrated_store(database_url, schema))
    except ConfigurationError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    except (StoreUnavailable, EventStoreError) as exc:
        raise fail(str(exc), EXIT_FAILED) from exc
    if as_json:
        out.print_json(json.dumps({"schema": schema, **asdict(report)}))
    elif report.rebased:
        out.print(
            f"schema {schema} re-based in {report.seconds:.2f}s, appends held for "
            f"{report.held_seconds:.2f}s: {report.numbered} waiting event(s) "
            f"numbered (last event_number {report.last_event_number}), ordering keys of "
            f"{report.lowered_events} event(s) and {report.lowered_streams} stream(s) lowered"
        )
    else:
        out.print(f"schema {schema} holds no transaction id of another cluster: nothing to do")
