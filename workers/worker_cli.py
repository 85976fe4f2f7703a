"""`tidings worker APP`: run an application's handlers; `tidings reset HANDLER`: rebuild one from scratch.

Both read PostgreSQL from ``DATABASE_URL`` (schema ``TIDINGS_SCHEMA``) and Kafka from
``KAFKA_BOOTSTRAP_SERVERS``, with further librdkafka settings from ``--kafka name=value`` and
``TIDINGS_KAFKA_<NAME>`` variables, as ``tidings relay`` does. APP is ``module:attribute`` naming a
``WorkerApp`` (or a zero-argument callable returning one); the current directory is importable.

``--set NAME.OPTION=VALUE`` gives a handler an option at start (``workers.overrides``), as Commanded's
``start_link(start_from: :current)``; a mistake in one exits 2 before anything runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from types import FrameType
from typing import Annotated

import typer
from confluent_kafka import KafkaException

from eventstore import DEFAULT_SCHEMA, ConfigurationError, PostgresEventStore, StoreConfig, validate_schema
from eventstore.errors import StoreUnavailable
from workers.app import Tenant, WorkerApp, WorkerConfig, check_tenant
from workers.cli_options import (
    EXIT_FAILED,
    EXIT_USAGE,
    AsJson,
    Bootstrap,
    DatabaseUrl,
    Kafka,
    LeaderUrl,
    Schema,
    fail,
    kafka_settings,
    migrated_store,
    required,
)
from workers.logs import configure_logging
from workers.overrides import InvalidOverride, parse_overrides
from workers.projection import Projection
from workers.reset import GroupNotDeleted, HandlerRunning, ResetRaced, handler_presence, reset_handler
from workers.worker import Worker, load_app

__all__ = ["reset_command", "worker_command"]


def load(spec: str, tenant: Tenant | None = None) -> WorkerApp:
    """``load_app`` with the current directory importable, as ``python -m`` has it."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    return load_app(spec, tenant)


StartOptions = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="NAME.OPTION=VALUE",
        help="Give handler NAME an option at start, over its class attribute (repeatable): start_from, "
        "concurrency, subscribe_to, partition_by, ordering, consistency, on_poison, max_attempts, "
        "static_membership; a process manager's idle_timeout, event_timeout. "
        "E.g. --set welcome-emails.start_from=current.",
    ),
]


def _setup(
    app_spec: str,
    database_url: str,
    schema: str,
    bootstrap_servers: str,
    kafka: list[str] | None,
    tenant: Tenant | None = None,
    leader_url: str = "",
    overrides: list[str] | None = None,
) -> tuple[WorkerApp, StoreConfig, str, dict[str, str]]:
    """The app (with the options given at start), the migrated store's config, the brokers and the
    Kafka settings; or the command's exit (2 for what the user must fix, 1 when PostgreSQL does not
    answer)."""
    try:
        worker_app = load(app_spec, tenant).with_overrides(parse_overrides(overrides or []))
        config = migrated_store(database_url, tenant.schema if tenant else schema, leader_url)
        brokers = required(bootstrap_servers, "--bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS")
        return worker_app, config, brokers, kafka_settings(kafka or [], dict(os.environ))
    except ConfigurationError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    except StoreUnavailable as exc:
        raise fail(str(exc), EXIT_FAILED) from exc


def worker_command(
    app_spec: Annotated[
        str, typer.Argument(metavar="APP", help="module:attribute naming a WorkerApp, e.g. bank.workers:app.")
    ],
    handler: Annotated[
        list[str] | None,
        typer.Option("--handler", help="Run only this handler (repeatable; default: all of the app's)."),
    ] = None,
    port: Annotated[
        int,
        typer.Option(
            envvar="TIDINGS_WORKER_PORT", help="Port of /healthz, /readyz and /metrics (0: any free)."
        ),
    ] = 8000,
    host: Annotated[str, typer.Option(help="Interface the probes listen on.")] = "0.0.0.0",  # noqa: S104
    partitions: Annotated[
        int, typer.Option(help="Partitions of the topics the worker creates (-1: broker default).")
    ] = -1,
    replication_factor: Annotated[
        int, typer.Option(help="Replicas of the topics the worker creates (-1: broker default).")
    ] = -1,
    instance_id: Annotated[
        str,
        typer.Option(envvar="POD_NAME", help="This member's stable id, for handlers with static membership."),
    ] = "",
    max_poll_records: Annotated[int, typer.Option(help="Messages taken from Kafka at a time.")] = 500,
    shutdown_timeout: Annotated[
        float, typer.Option(help="Seconds a stop waits for the messages in flight.")
    ] = 30.0,
    kafka: Kafka = None,
    database_url: DatabaseUrl = "",
    bootstrap_servers: Bootstrap = "",
    schema: Schema = DEFAULT_SCHEMA,
    leader_url: LeaderUrl = "",
    set_: StartOptions = None,
    tenant: Annotated[
        list[str] | None,
        typer.Option(
            "--tenant",
            help="Run the app once per tenant (repeatable): schema <schema>_<tenant>, topics and groups "
            "named by APP's factory, which takes the Tenant.",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(envvar="TIDINGS_LOG_LEVEL")] = "info",
    log_format: Annotated[str, typer.Option(envvar="TIDINGS_LOG_FORMAT", help="json or text.")] = "json",
) -> None:
    """Run the handlers of APP until SIGTERM, serving /healthz, /readyz and /metrics on --port.

    A handler stopped by its error policy (or failed) is logged and shown by /readyz; the others go on.

    SIGTERM or SIGINT finish the messages in flight, commit, and exit 0.

    --set NAME.OPTION=VALUE gives a handler an option at start; its start_from applies to a first start only.

    Example: [bold]tidings worker bank.workers:app --handler balances --port 8000[/] ·
    [bold]tidings worker examples.bank.workers:build --schema bank --tenant acme --tenant globex[/] ·
    [bold]tidings worker bank.workers:app --set welcome-emails.start_from=current[/]
    """
    configure_logging(log_level, log_format)
    try:
        names = [check_tenant(name) for name in dict.fromkeys(tenant or [])]
        tenants = [Tenant(name, validate_schema(f"{schema}_{name}")) for name in names]
        _check_selected(parse_overrides(set_ or []), handler)
    except ConfigurationError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    with contextlib.ExitStack() as stack:
        parts = []
        choices: list[Tenant | None] = [*tenants] if tenants else [None]
        for one in choices:
            worker_app, config, brokers, settings = _setup(
                app_spec, database_url, schema, bootstrap_servers, kafka, one, leader_url, set_
            )
            store = stack.enter_context(PostgresEventStore(config, sequencer=False))
            try:
                worker_config = WorkerConfig(
                    store,
                    brokers,
                    settings,
                    partitions=partitions,
                    replication_factor=replication_factor,
                    max_poll_records=max_poll_records,
                    shutdown_timeout=shutdown_timeout,
                    instance_id=instance_id,
                )
            except ConfigurationError as exc:
                raise fail(str(exc), EXIT_USAGE) from exc
            stack.callback(worker_config.dispose)
            parts.append((worker_app, worker_config))
        (first_app, first_config), *_ = parts
        try:
            worker = Worker(
                first_app, first_config, handler, port=port, host=host, tenants=parts if tenants else ()
            )
        except ConfigurationError as exc:
            raise fail(str(exc), EXIT_USAGE) from exc
        stopping = threading.Event()

        def stop(signum: int, frame: FrameType | None) -> None:
            stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            worker.run(until=stopping)
        except ConfigurationError as exc:
            raise fail(str(exc), EXIT_USAGE) from exc


def _check_selected(overrides: dict[str, dict[str, object]], handlers: list[str] | None) -> None:
    """An option given to a handler this worker does not run would be ignored: refused instead."""
    if not handlers:
        return
    idle = [name for name in overrides if name not in handlers]
    if idle:
        raise InvalidOverride(
            f"--set names {', '.join(map(repr, idle))}, which this worker does not run (--handler "
            f"{' --handler '.join(handlers)}): give the option to the worker that runs it, or drop it"
        )


def reset_command(
    handler: Annotated[
        str, typer.Argument(metavar="HANDLER", help="The handler's name (its consumer group).")
    ],
    app_spec: Annotated[
        str,
        typer.Option(
            "--app", metavar="APP", envvar="TIDINGS_WORKER_APP", help="module:attribute naming the WorkerApp."
        ),
    ],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    kafka: Kafka = None,
    database_url: DatabaseUrl = "",
    bootstrap_servers: Bootstrap = "",
    schema: Schema = DEFAULT_SCHEMA,
    leader_url: LeaderUrl = "",
    set_: StartOptions = None,
    as_json: AsJson = False,
) -> None:
    """Make HANDLER start over from its start_from: a projection's read model is rebuilt from scratch.

    Refused (exit 1, nothing changed) while any worker runs the handler, or stands by to: scale them to
    zero first. The reset holds the handler's global-order lock throughout (through --leader-url, as the
    workers take it): a worker started meanwhile waits for the reset to end.

    First the handler's before_reset() is called.

    Then, in one transaction: a projection's tables are emptied; checkpoints, start_from and parked go.

    Last, the handler's consumer group is deleted in Kafka.

    Give it the --set options its workers are given, so that it says where the handler starts over.

    Example: [bold]tidings reset balances --app bank.workers:app --yes[/]
    """
    worker_app, config, brokers, settings = _setup(
        app_spec, database_url, schema, bootstrap_servers, kafka, leader_url=leader_url, overrides=set_
    )
    try:
        handler_class = worker_app.handler(handler)
    except ConfigurationError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    with PostgresEventStore(config, sequencer=False) as store:
        worker_config = WorkerConfig(store, brokers, settings)
        try:
            # Asked before the question; reset_handler asks again, holding the handler's lock.
            presence = handler_presence(worker_config, handler)
            if presence.running:
                raise HandlerRunning(handler, presence)
            if not yes:
                tables = (
                    [t.fullname for t in handler_class.tables]
                    if issubclass(handler_class, Projection)
                    else []
                )
                emptied = f"empty the tables {', '.join(tables)}, " if tables else ""
                typer.confirm(
                    f"Reset {handler!r}? This will {emptied}delete its checkpoints, start_from subscription "
                    f"and parked events, and its consumer group; it then starts over from "
                    f"{handler_class.start_from!r}.",
                    abort=True,
                )
            report = reset_handler(worker_app, worker_config, handler)
        except (HandlerRunning, ResetRaced, GroupNotDeleted, ConfigurationError) as exc:
            raise fail(str(exc), EXIT_FAILED) from exc
        except KafkaException as exc:
            raise fail(f"cannot reach Kafka: {exc}", EXIT_FAILED) from exc
        except StoreUnavailable as exc:
            raise fail(str(exc), EXIT_FAILED) from exc
    if as_json:
        document = {
            "handler": handler,
            "tables_truncated": list(report.tables),
            "parked_deleted": report.parked,
            "group_deleted": report.group_deleted,
            "start_from": handler_class.start_from,
        }
        typer.echo(json.dumps(document))
        return
    truncated = f"truncated {', '.join(report.tables)}; " if report.tables else ""
    group = "consumer group deleted" if report.group_deleted else "no consumer group to delete"
    typer.echo(
        f"reset {handler!r}: {truncated}checkpoints and start_from subscription deleted; "
        f"{report.parked} parked event(s) deleted; {group}. "
        f"It starts over from {handler_class.start_from!r} when a worker runs it next."
    )
