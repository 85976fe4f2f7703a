"""`tidings relay`: publish the store's events to Kafka; `tidings relay status`: where each relay is.

Run as many relay processes as you like (a Deployment with two replicas is usual): one leads, the
others stand by and take over within ``--standby-poll`` seconds. SIGTERM ends the relay after its
current batch.

Kafka settings come from ``--kafka name=value`` and from ``TIDINGS_KAFKA_<NAME>`` variables
(``TIDINGS_KAFKA_SASL_PASSWORD`` sets ``sasl.password``), so secrets can stay in the environment.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import tomllib
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from eventstore import (
    DEFAULT_SCHEMA,
    ConfigurationError,
    PostgresEventStore,
    StoreConfig,
    current_revision,
    head_revision,
)
from eventstore.command_sender import CommandSender, SenderConfig
from eventstore.relay import (
    Relay,
    RelayConfig,
    TopicCreationFailed,
    TopicLimitTooSmall,
    TopicMissing,
    relay_status,
    resume_after,
)
from eventstore.relay_position import InvalidResumePoint
from eventstore.routing import Routing
from workers.cli_options import (
    EXIT_FAILED,
    EXIT_USAGE,
    DatabaseUrl,
    LeaderUrl,
    Schema,
    kafka_settings,
    required,
)
from workers.logs import configure_logging
from workers.probes import Probes

__all__ = ["relay_app"]

relay_app = typer.Typer(
    help="Publish the store's committed events to Kafka, exactly once and in order.\n\n"
    "Example: [bold]tidings relay --schema bank --partitions 12 --port 8000[/]",
    invoke_without_command=True,
)
out = Console()


def load_routing(path: Path) -> Routing:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"cannot read the routing file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path} is not TOML: {exc}") from None
    return Routing.from_document(document, where=str(path))


@relay_app.callback()
def relay_command(
    ctx: typer.Context,
    database_url: DatabaseUrl = "",
    bootstrap_servers: Annotated[
        str,
        typer.Option(envvar="KAFKA_BOOTSTRAP_SERVERS", show_default=False, help="Kafka bootstrap servers."),
    ] = "",
    schema: Schema = DEFAULT_SCHEMA,
    name: Annotated[str, typer.Option(envvar="TIDINGS_RELAY_NAME", help="The relay's name.")] = "default",
    app_name: Annotated[
        str | None,
        typer.Option("--app", envvar="TIDINGS_APP", help="Default topic <app>.events (default: schema)."),
    ] = None,
    routing_file: Annotated[
        Path | None,
        typer.Option(
            "--routing",
            envvar="TIDINGS_RELAY_ROUTING",
            help="TOML file of topics and keys per event type or category.",
        ),
    ] = None,
    kafka: Annotated[
        list[str] | None, typer.Option(help="A librdkafka setting, name=value (repeatable).")
    ] = None,
    create_topics: Annotated[bool, typer.Option(help="Create missing topics (else: an error).")] = True,
    partitions: Annotated[int, typer.Option(help="Partitions of created topics (-1: broker default).")] = -1,
    replication_factor: Annotated[
        int, typer.Option(help="Replicas of created topics (-1: broker default).")
    ] = -1,
    batch_size: Annotated[int, typer.Option(help="Events per Kafka transaction at most.")] = 5000,
    batch_bytes: Annotated[
        int, typer.Option(help="Bytes of data and metadata per transaction (a larger event goes alone).")
    ] = 16 * 1024 * 1024,
    compression: Annotated[
        str, typer.Option(help="compression.type: none, gzip, snappy, lz4, zstd.")
    ] = "lz4",
    leader_url: LeaderUrl = "",
    standby_poll: Annotated[float, typer.Option(help="Seconds between a standby's attempts to lead.")] = 1.0,
    ignore_store: Annotated[
        list[str] | None,
        typer.Option(
            help="A store id whose messages on the relay's topics are known leftovers (repeatable; "
            "`tidings relay status` names them when it refuses to publish)."
        ),
    ] = None,
    problem_retry: Annotated[
        float, typer.Option(help="Seconds between attempts while a problem stops publication.")
    ] = 5.0,
    send_commands: Annotated[
        bool,
        typer.Option(
            help="Also send the command outbox (process managers' commands to other applications) to "
            "<destination>.commands, exactly once, with a leader of its own."
        ),
    ] = True,
    port: Annotated[
        int,
        typer.Option(
            "--port",
            "--metrics-port",
            envvar="TIDINGS_RELAY_PORT",
            help="Serve /healthz, /readyz and /metrics on this port (0: off).",
        ),
    ] = 0,
    host: Annotated[str, typer.Option(help="Interface the probes listen on.")] = "0.0.0.0",  # noqa: S104
    log_level: Annotated[str, typer.Option(envvar="TIDINGS_LOG_LEVEL")] = "info",
    log_format: Annotated[str, typer.Option(envvar="TIDINGS_LOG_FORMAT", help="json or text.")] = "json",
) -> None:
    """Publish committed events to Kafka until SIGTERM; stand by while another relay leads.

    Example: [bold]DATABASE_URL=... KAFKA_BOOTSTRAP_SERVERS=... tidings relay --schema bank --partitions 12[/]
    """
    if ctx.invoked_subcommand is not None:
        return
    configure_logging(log_level, log_format)
    try:
        config = StoreConfig(
            required(database_url, "--database-url / DATABASE_URL"), schema, leader_url=leader_url or None
        )
        relay_config = RelayConfig(
            required(bootstrap_servers, "--bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS"),
            app=app_name,
            routing=load_routing(routing_file) if routing_file else None,
            name=name,
            kafka=kafka_settings(kafka or [], dict(os.environ)),
            create_topics=create_topics,
            partitions=partitions,
            replication_factor=replication_factor,
            batch_size=batch_size,
            batch_bytes=batch_bytes,
            compression=compression,
            standby_poll=standby_poll,
            ignore_stores=frozenset(ignore_store or ()),
            problem_retry=problem_retry,
        )
        sender_config = SenderConfig(
            relay_config.bootstrap_servers,
            name=name,
            kafka=relay_config.kafka,
            create_topics=create_topics,
            partitions=partitions,
            replication_factor=replication_factor,
            standby_poll=standby_poll,
        )
        if current_revision(config) != head_revision():
            raise ConfigurationError(
                f"the store in schema {schema!r} is not migrated: run `tidings migrate` first"
            )
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from exc
    with PostgresEventStore(config) as store:
        relay = Relay(store, relay_config)
        # Beside the relay, with a leadership of its own: one process of the Deployment sends.
        sender = CommandSender(store, sender_config) if send_commands else None
        stopping = threading.Event()

        def readiness() -> tuple[bool, dict[str, Any]]:
            # A standby is ready too: it is what takes over, and a disruption budget counts it.
            ready = not stopping.is_set()
            return ready, {
                "ready": ready,
                "relay": name,
                "leading": relay.leading.is_set(),
                "last_published": relay.last_published,
                # Still ready while a problem stops it: a restart would not help, and it says why.
                "verdict": "ok" if relay.problem is None else relay.problem.verdict,
                "problem": "" if relay.problem is None else str(relay.problem),
                "command_sender": "off"
                if sender is None
                else "leading"
                if sender.leading.is_set()
                else "standby"
                if sender.alive()
                else "stopped",
            }

        probes = Probes(readiness, host=host, port=port) if port else None

        def stop(signum: int, frame: FrameType | None) -> None:
            stopping.set()
            relay.stop()
            if sender is not None:
                sender.stop()

        def sender_died(error: BaseException) -> None:
            # The relay does not go on without its sender: the process exits, and is restarted.
            stopping.set()
            relay.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            if probes is not None:
                probes.start()
            if sender is not None:
                sender.on_failure = sender_died
                sender.start()
            relay.run()
            if sender is not None and sender.failure is not None:
                typer.echo(
                    f"error: the command sender stopped: {type(sender.failure).__name__}: {sender.failure}",
                    err=True,
                )
                raise typer.Exit(EXIT_FAILED)
        except (TopicMissing, TopicCreationFailed, TopicLimitTooSmall) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_FAILED) from exc
        except ConfigurationError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_USAGE) from exc
        finally:
            if probes is not None:
                probes.stop()


@relay_app.command("status")
def status_command(
    database_url: DatabaseUrl = "",
    schema: Schema = DEFAULT_SCHEMA,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Each relay's last published event, lag behind the sequencer, last leader and verdict.

    Exits 1 when a relay's verdict is not ok: what stops it and what to do are in the problem column.

    Example: [bold]tidings relay status --schema bank --json[/]
    """
    try:
        config = StoreConfig(required(database_url, "--database-url / DATABASE_URL"), schema)
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from exc
    with PostgresEventStore(config, sequencer=False) as store:
        statuses = relay_status(store)
    if as_json:
        out.print_json(json.dumps([asdict(s) for s in statuses], default=str))
    else:
        table = Table("relay", "last published", "last numbered", "lag (events)", "leader", "verdict")
        for s in statuses:
            table.add_row(
                s.name,
                str(s.last_published),
                str(s.last_numbered),
                str(s.lag_events),
                s.leader or "-",
                s.verdict,
            )
        out.print(table)
        for s in statuses:
            if s.verdict != "ok":
                out.print(
                    f"[bold red]{s.name}[/] ({s.verdict}, since {s.problem_since}): {s.problem}",
                    soft_wrap=True,
                )
    if any(s.verdict != "ok" for s in statuses):
        raise typer.Exit(EXIT_FAILED)


@relay_app.command("resume-after")
def resume_after_command(
    event_number: Annotated[int, typer.Argument(help="The last event_number the relay counts as published.")],
    database_url: DatabaseUrl = "",
    schema: Schema = DEFAULT_SCHEMA,
    name: Annotated[str, typer.Option(envvar="TIDINGS_RELAY_NAME", help="The relay's name.")] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Tell a relay to go on after EVENT_NUMBER, whatever its topics' tail says (an operator's decision).

    For a relay whose verdict asks for it (kafka_ahead, tail_mismatch, tail_unconfirmed): the leading relay
    takes it within a second and publishes the store's events after EVENT_NUMBER (0: every event again).
    Its messages from before the decision no longer say where it stands (a new epoch).

    Example: [bold]tidings relay resume-after 41872 --schema bank[/]
    """
    try:
        config = StoreConfig(required(database_url, "--database-url / DATABASE_URL"), schema)
    except ConfigurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from exc
    with PostgresEventStore(config, sequencer=False) as store:
        try:
            epoch = resume_after(store, event_number, name)
        except InvalidResumePoint as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_USAGE) from exc
    if as_json:
        out.print_json(json.dumps({"relay": name, "after_event_number": event_number, "epoch": epoch}))
    else:
        out.print(f"relay {name} goes on after event_number {event_number} (epoch {epoch})")
