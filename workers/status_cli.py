"""`tidings status`: the relays and every handler's consumer group, where they are and how far behind.

A thin shell over ``workers.status.collect_status``: tables for people, ``--json`` for scripts. It reads
PostgreSQL (``DATABASE_URL``, ``TIDINGS_SCHEMA``) and Kafka (``KAFKA_BOOTSTRAP_SERVERS``, ``--kafka``,
``TIDINGS_KAFKA_<NAME>``) as the other commands do, changes nothing, and needs no running worker.

Exit codes: 0 shown; 1 PostgreSQL or Kafka did not answer; 2 a usage error (a bad ``--app``, a store
that is not migrated).
"""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from eventstore import DEFAULT_SCHEMA, ConfigurationError, PostgresEventStore
from eventstore.errors import StoreUnavailable
from workers.cli_options import (
    EXIT_FAILED,
    EXIT_USAGE,
    Bootstrap,
    DatabaseUrl,
    Kafka,
    Schema,
    fail,
    kafka_settings,
    migrated_store,
    required,
)
from workers.status import (
    HandlerProgress,
    HandlerSpec,
    KafkaUnavailable,
    StoreStatus,
    collect_status,
    specs_of,
)
from workers.worker_cli import load

__all__ = ["status_command"]

out = Console()


def status_command(
    app_spec: Annotated[
        str | None,
        typer.Option(
            "--app",
            metavar="APP",
            envvar="TIDINGS_WORKER_APP",
            help="module:attribute naming the WorkerApp: its handlers, kinds and topics (default: found).",
        ),
    ] = None,
    app_name: Annotated[
        str | None,
        typer.Option(
            "--app-name",
            envvar="TIDINGS_APP",
            help="Without --app: the topic <app-name>.events (default: schema).",
        ),
    ] = None,
    handler: Annotated[
        list[str] | None, typer.Option("--handler", help="Only this handler (repeatable).")
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds each question to Kafka may take.")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    kafka: Kafka = None,
    database_url: DatabaseUrl = "",
    bootstrap_servers: Bootstrap = "",
    schema: Schema = DEFAULT_SCHEMA,
) -> None:
    """The relays, and each handler's lag, last event, parked events and process instances.

    Handlers come from --app, or are found in the store and among the consumer groups of the app's topics.

    Example: [bold]tidings status --app bank.workers:app[/]  or  [bold]tidings status --json[/]
    """
    try:
        specs: list[HandlerSpec] | None = None
        if app_spec is not None:
            worker_app = load(app_spec)
            specs = specs_of(worker_app)
            topics = sorted({topic for spec in specs for topic in spec.topics})
        else:
            topics = [f"{app_name or schema}.events"]
        if handler:
            specs = [HandlerSpec(name) for name in handler] if specs is None else _only(specs, handler)
        config = migrated_store(database_url, schema)
        brokers = required(bootstrap_servers, "--bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS")
        settings = kafka_settings(kafka or [], dict(os.environ))
    except ConfigurationError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    except StoreUnavailable as exc:
        raise fail(str(exc), EXIT_FAILED) from exc
    try:
        with PostgresEventStore(config, sequencer=False) as store:
            status = collect_status(store, brokers, settings, topics=topics, handlers=specs, timeout=timeout)
    except (KafkaUnavailable, StoreUnavailable) as exc:
        raise fail(str(exc), EXIT_FAILED) from exc
    if as_json:
        typer.echo(json.dumps(status.document(), indent=2))
    else:
        _print(status)


def _only(specs: list[HandlerSpec], names: list[str]) -> list[HandlerSpec]:
    unknown = sorted(set(names) - {spec.name for spec in specs})
    if unknown:
        raise ConfigurationError(f"the app has no handler {unknown}; it has {[s.name for s in specs]}")
    return [spec for spec in specs if spec.name in names]


def _print(status: StoreStatus) -> None:
    relays = Table(title=f"relays of schema {status.schema} (last event_number {status.last_event_number})")
    for column in ("relay", "leader", "last published", "last numbered", "lag (events)", "verdict"):
        relays.add_column(column)
    for relay in status.relays:
        relays.add_row(
            relay.name,
            relay.leader or "-",
            str(relay.last_published),
            str(relay.last_numbered),
            str(relay.lag_events),
            relay.verdict,
        )
    out.print(relays if status.relays else "no relay has run on this store")
    for relay in status.relays:
        if relay.verdict != "ok":
            out.print(f"[bold red]relay {relay.name}[/] ({relay.verdict}): {relay.problem}", soft_wrap=True)
    _print_commands(status)
    if not status.handlers:
        out.print(f"no handler found for {', '.join(status.topics)}")
        return
    handlers = Table(title="handlers (consumer groups)")
    for column in (
        "handler",
        "kind",
        "state",
        "order",
        "mode",
        "group",
        "lag",
        "last event",
        "parked",
        "instances",
        "scheduled",
    ):
        handlers.add_column(column, overflow="fold")
    for h in status.handlers:
        handlers.add_row(
            h.name,
            h.kind or "?",
            f"[red]{h.state}[/]: {escape(h.reason)}" if h.state else "ok",
            (
                (f"global, active {h.active}" if h.active else h.ordering or "?")
                + (f", {h.standbys} standby" if h.standbys else "")
            )
            if h.ordering != "per_key"
            else "per key",
            f"{h.mode or '?'}, {h.consistency}",
            f"{h.group_state}, {h.members} member(s)",
            _lag(h.total_lag, h.lag_exact),
            _number(h.last_event_number),
            str(h.parked),
            _number(h.instances),
            _number(h.scheduled),
        )
    out.print(handlers)
    out.print(_partitions(status.handlers))
    for h in status.handlers:
        if h.state:
            out.print(f"{h.name} is {h.state}: fix the cause, then `tidings handler restart {h.name}`")
    if any(h.kind is None for h in status.handlers):
        out.print("kind ?: found in the store and Kafka without its app; pass --app to know it")


def _print_commands(status: StoreStatus) -> None:
    """Commands to other applications waiting to be sent, and the commands this store received."""
    for o in status.outbox:
        out.print(
            f"[bold]command outbox[/] to {escape(o.destination)}: {o.unsent} unsent, oldest "
            f"{o.oldest_seconds:.0f} s"
            + (f", {o.set_aside} set aside (`tidings outbox list`)" if o.set_aside else "")
            + (f"; last error: {escape(o.last_error)}" if o.last_error else ""),
            soft_wrap=True,
        )
    for r in status.receivers:
        lag = "?" if r.lag is None else str(r.lag)
        out.print(
            f"[bold]commands received[/] by {escape(r.name)}: {r.received} executed, {r.parked} parked, "
            f"lag {lag}" + (f" (`tidings parked list --handler {r.name}`)" if r.parked else ""),
            soft_wrap=True,
        )


def _partitions(handlers: tuple[HandlerProgress, ...]) -> Table:
    table = Table(title="partitions")
    for column in ("handler", "partition", "position", "end", "lag", "last event"):
        table.add_column(column, overflow="fold")
    for h in handlers:
        for p in h.partitions:
            table.add_row(
                h.name,
                f"{p.topic}[{p.partition}]",
                _number(p.position),
                str(p.end),
                _lag(p.lag, p.lag_exact),
                _number(p.last_event_number) if p.last_event_number is not None else f"- ({p.note})",
            )
    return table


def _lag(lag: int, exact: bool) -> str:
    return str(lag) if exact else f"<= {lag}"


def _number(value: int | None) -> str:
    return "-" if value is None else str(value)
