"""`tidings events read STREAM` and `tidings events tail`: the store's events, for people and for scripts.

``read`` prints one stream's events, oldest first; ``tail`` prints events in the global order (the last
ten by default) and then follows the store as it grows, until SIGINT or SIGTERM (exit 0). Each event is
a block of its identity, place, metadata and data (``workers.event_view`` decodes the data); ``--json``
prints one JSON object per line instead (JSON Lines), with the keys ``workers.event_view`` lists.

Exit codes: 0 printed; 1 no such stream, a soft-deleted stream, or PostgreSQL did not answer; 2 a usage
error (a bad ``--app``, ``--schemas`` or option, a store that is not migrated).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from eventstore import (
    DEFAULT_SCHEMA,
    ConfigurationError,
    InvalidStreamId,
    PostgresEventStore,
    RecordedEvent,
    StreamDeleted,
    StreamNotFound,
)
from eventstore.errors import StoreUnavailable
from tidings.avro import SchemaSet
from tidings.errors import SchemaFileError
from workers.cli_options import EXIT_FAILED, EXIT_USAGE, DatabaseUrl, Schema, fail, open_store
from workers.event_view import DataDecoder, event_document, json_line
from workers.worker_cli import load

__all__ = ["events_app"]

events_app = typer.Typer(
    help="The store's events: one stream's, or the global order as it grows.", no_args_is_help=True
)
out = Console(highlight=False)

BATCH = 500
WAIT_SECONDS = 1.0
"""How long ``tail --follow`` waits for new events between checks for SIGINT/SIGTERM."""

App = Annotated[
    str | None,
    typer.Option(
        "--app",
        metavar="APP",
        envvar="TIDINGS_WORKER_APP",
        help="module:attribute naming the WorkerApp whose mapper decodes the events.",
    ),
]
Schemas = Annotated[
    Path | None,
    typer.Option("--schemas", metavar="DIR", help="Decode Avro data with the writer schemas in DIR (.avsc)."),
]
AsJson = Annotated[bool, typer.Option("--json", help="One JSON object per event and line (JSON Lines).")]
Count = Annotated[int | None, typer.Option(min=1, help="At most this many events.")]


@events_app.command("read")
def read_command(
    stream: Annotated[str, typer.Argument(metavar="STREAM", help="The stream's id.")],
    from_version: Annotated[
        int, typer.Option("--from", metavar="VERSION", min=1, help="The first stream version to print.")
    ] = 1,
    count: Count = None,
    app_spec: App = None,
    schemas: Schemas = None,
    as_json: AsJson = False,
    database_url: DatabaseUrl = "",
    schema: Schema = DEFAULT_SCHEMA,
) -> None:
    """STREAM's events, oldest first, with their metadata and data.

    Example: [bold]tidings events read account-42 --from 3 --app bank.workers:app[/]
    """
    decoder = _decoder(app_spec, schemas)
    with _store(database_url, schema) as store:
        try:
            info = store.stream_info(stream)
            if info.deleted:
                raise StreamDeleted(stream)
            events = list(itertools.islice(store.stream_forward(stream, from_version, BATCH), count))
        except StreamNotFound as exc:
            raise fail(f"no stream {stream!r} in schema {schema!r}", EXIT_FAILED) from exc
        except StreamDeleted as exc:
            raise fail(
                f"stream {stream!r} was soft-deleted: it refuses reads and appends; its events keep their "
                "place in the global order (`tidings events tail --from-number N` shows them)",
                EXIT_FAILED,
            ) from exc
        except InvalidStreamId as exc:
            raise fail(str(exc), EXIT_USAGE) from exc
    if not as_json:
        shown = f"versions {from_version} to {from_version + len(events) - 1}" if events else "no events"
        out.print(Text(f"{stream}: version {info.stream_version}; {shown}", style="bold"))
    _emit(events, decoder, as_json)


@events_app.command("tail")
def tail_command(
    from_number: Annotated[
        int | None,
        typer.Option("--from-number", metavar="N", min=1, help="Start at event_number N."),
    ] = None,
    last: Annotated[
        int | None,
        typer.Option("--last", metavar="N", min=0, help="Start with the last N events (default 10)."),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Keep printing new events until SIGINT/SIGTERM.")
    ] = True,
    count: Count = None,
    app_spec: App = None,
    schemas: Schemas = None,
    as_json: AsJson = False,
    database_url: DatabaseUrl = "",
    schema: Schema = DEFAULT_SCHEMA,
) -> None:
    """Events in the global order (event_number), as they are numbered; Ctrl-C ends it.

    Example: [bold]tidings events tail --last 20 --json | jq .event_type[/]
    """
    if from_number is not None and last is not None:
        raise fail("give --from-number or --last, not both", EXIT_USAGE)
    decoder = _decoder(app_spec, schemas)
    stopping = threading.Event()
    with _store(database_url, schema) as store, _until_signalled(stopping):
        known = store.last_event_number()
        start = from_number if from_number is not None else max(1, known - (10 if last is None else last) + 1)
        left = count
        while not stopping.is_set():
            batch = store.read_all_forward(start, BATCH if left is None else min(BATCH, left))
            if not _emit(batch, decoder, as_json):
                return  # the reader went away (a closed pipe)
            if batch:
                start = batch[-1].event_number + 1  # type: ignore[operator]  # numbered: read from $all
            elif known >= start:
                start = known + 1  # hard-deleted events leave numbers without events
            if left is not None:
                left -= len(batch)
                if left == 0:
                    return
            if len(batch) == BATCH:
                continue
            if not follow:
                return
            known = store.wait_for_numbered(start - 1, timeout=WAIT_SECONDS)


def _decoder(app_spec: str | None, schemas: Path | None) -> DataDecoder:
    try:
        return DataDecoder(
            mapper=load(app_spec).mapper if app_spec is not None else None,
            schemas=SchemaSet.load(schemas) if schemas is not None else None,
        )
    except (ConfigurationError, SchemaFileError) as exc:
        raise fail(str(exc), EXIT_USAGE) from exc


@contextmanager
def _store(database_url: str, schema: str) -> Iterator[PostgresEventStore]:
    store = open_store(database_url, schema)
    try:
        with store:
            yield store
    except StoreUnavailable as exc:
        raise fail(str(exc), EXIT_FAILED) from exc


@contextmanager
def _until_signalled(stopping: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stopping`` (the loop ends within ``WAIT_SECONDS``) instead of raising."""

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _emit(events: Iterable[RecordedEvent], decoder: DataDecoder, as_json: bool) -> bool:
    """Print ``events``; False once the output is closed (``tidings events tail | head``)."""
    try:
        for recorded in events:
            document = event_document(recorded, decoder)
            if as_json:
                sys.stdout.write(json_line(document) + "\n")
            else:
                out.print(_block(document))
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit: point it at nothing instead.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return False
    return True


def _block(document: dict[str, Any]) -> Group:
    """One event for a terminal: a heading line, then its ids, metadata and data."""
    number = document["event_number"]
    heading = Text.assemble(
        (f"#{number if number is not None else '-'} ", "bold"),
        (document["event_type"], "bold cyan"),
        f"  {document['stream_id']} v{document['stream_version']}  ",
        (document["created_at"], "dim"),
    )
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="dim", no_wrap=True)
    fields.add_column(overflow="fold")
    for name in ("event_id", "causation_id", "correlation_id", "schema_id"):
        if document[name]:
            fields.add_row(name, document[name])
    metadata = document["metadata_base64"]
    fields.add_row(
        "metadata", Text(f"base64:{metadata}" if metadata is not None else _json(document["metadata"]))
    )
    data = "not decoded (--json gives it in base64)" if document["data_base64"] else _json(document["data"])
    fields.add_row(f"data ({document['data_format']})", Text(data))
    if document["data_note"]:
        fields.add_row("note", Text(document["data_note"], style="yellow"))
    return Group(heading, Padding(fields, (0, 0, 0, 2)), Text(""))


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
