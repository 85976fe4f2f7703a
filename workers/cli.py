"""The ``tidings`` command line: a thin shell over library functions.

Exit codes: 0 success, 1 unhealthy or failed, 2 usage error, 3 a service could not be provided
(a missing prerequisite or a service that did not start; the message says which and what to do).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from eventstore import DEFAULT_SCHEMA, ConfigurationError, EventStoreError, StoreConfig, migrate
from tidings import devservices
from workers.cli_options import AsJson, Bootstrap, DatabaseUrl, Kafka, Schema, kafka_settings
from workers.demo_cli import demo_command
from workers.events_cli import events_app
from workers.handler_cli import handler_app
from workers.health import HealthReport, check_health
from workers.outbox_cli import outbox_app
from workers.parked_cli import parked_app
from workers.relay_cli import relay_app
from workers.schemas_cli import schemas_app
from workers.status_cli import status_command
from workers.store_cli import store_app
from workers.worker_cli import reset_command, worker_command

__all__ = ["app"]

EXIT_UNHEALTHY = 1
EXIT_SERVICE = 3

app = typer.Typer(
    name="tidings",
    help="Event-sourced, CQRS applications on PostgreSQL and Apache Kafka.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    add_completion=False,
)
dev_app = typer.Typer(
    help="Local PostgreSQL and Kafka for development, kept running between commands.", no_args_is_help=True
)
app.add_typer(dev_app, name="dev")
app.add_typer(schemas_app, name="schemas")
app.add_typer(relay_app, name="relay")
app.add_typer(parked_app, name="parked")
app.add_typer(outbox_app, name="outbox")
app.add_typer(events_app, name="events")
app.add_typer(handler_app, name="handler")
app.add_typer(store_app, name="store")
app.command("worker")(worker_command)
app.command("demo")(demo_command)
app.command("reset")(reset_command)
app.command("status")(status_command)

out = Console()
err = Console(stderr=True)


@contextmanager
def _service_errors() -> Iterator[None]:
    """Turn provisioning and configuration errors into a clear message and an exit code."""
    try:
        yield
    except devservices.ServiceError as exc:
        # Plain echo: a console would wrap the message and its log tail at the terminal's width.
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_SERVICE) from exc
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _print_health(report: HealthReport, as_json: bool) -> None:
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "ok": report.ok,
                    "checks": [
                        {"name": c.name, "ok": c.ok, "detail": c.detail, "seconds": round(c.seconds, 3)}
                        for c in report.checks
                    ],
                }
            )
        )
        return
    table = Table(title="tidings health")
    for column in ("check", "status", "detail", "seconds"):
        table.add_column(column)
    for check in report.checks:
        status = "[green]ok[/]" if check.ok else "[red]FAIL[/]"
        table.add_row(check.name, status, check.detail, f"{check.seconds:.2f}")
    out.print(table)


@app.command("migrate")
def migrate_command(
    database_url: DatabaseUrl, schema: Schema = DEFAULT_SCHEMA, as_json: AsJson = False
) -> None:
    """Apply the event store's migrations to SCHEMA (created if missing). Safe to run concurrently.

    A store moved from another PostgreSQL cluster is re-based too (as `tidings store rebase` does).

    Example: [bold]DATABASE_URL=postgresql://app@db/app tidings migrate --schema bank[/]
    """
    with _service_errors():
        try:
            revision = migrate(StoreConfig(database_url, schema))
        except ConfigurationError:
            raise
        except EventStoreError as exc:  # the re-base of a moved store could not be made
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_UNHEALTHY) from exc
    if as_json:
        out.print_json(json.dumps({"schema": schema, "revision": revision}))
    else:
        out.print(f"schema {schema} at revision {revision}")


@app.command("health")
def health_command(
    database_url: DatabaseUrl,
    bootstrap_servers: Bootstrap,
    schema: Schema = DEFAULT_SCHEMA,
    kafka: Kafka = None,
    migrate_first: Annotated[
        bool, typer.Option("--migrate", help="Apply migrations before checking.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Check PostgreSQL, the store's schema revision and Kafka; exit 1 if any check fails.

    Example: [bold]tidings health --migrate --json[/]
    """
    with _service_errors():
        store = StoreConfig(database_url, schema)
        if migrate_first:
            migrate(store)
        report = check_health(store, bootstrap_servers, kafka_settings(kafka or [], dict(os.environ)))
    _print_health(report, as_json)
    if not report.ok:
        raise typer.Exit(EXIT_UNHEALTHY)


@dev_app.command("up")
def dev_up_command(as_json: AsJson = False) -> None:
    """Start a local PostgreSQL and Kafka (or reuse running ones) and print the variables to export.

    Example: [bold]eval "$(tidings dev up)"[/]
    """
    with _service_errors(), err.status("starting PostgreSQL and Kafka..."):
        state = devservices.dev_up()
    if as_json:
        out.print_json(json.dumps(state.exports()))
    else:
        for name, value in state.exports().items():
            typer.echo(f"export {name}={value}")


@dev_app.command("down")
def dev_down_command(as_json: AsJson = False) -> None:
    """Stop the services started by `tidings dev up` and delete their data (logs are kept).

    Example: [bold]tidings dev down[/]
    """
    stopped = devservices.dev_down()
    if as_json:
        out.print_json(json.dumps({"stopped": stopped}))
    elif stopped:
        err.print("stopped")
    else:
        err.print("nothing to stop: `tidings dev up` has not run")


@dev_app.command("status")
def dev_status_command(as_json: AsJson = False) -> None:
    """Whether the services of `tidings dev up` answer; exit 1 if not up or not answering.

    Example: [bold]tidings dev status --json[/]
    """
    status = devservices.dev_status()
    if as_json:
        out.print_json(json.dumps(status))
    elif not status:
        err.print("not up: run `tidings dev up`")
    else:
        for name, ok in status.items():
            out.print(f"{name}: {'[green]answering[/]' if ok else '[red]not answering[/]'}")
    if not status or not all(status.values()):
        raise typer.Exit(EXIT_UNHEALTHY)
