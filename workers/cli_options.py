"""What the ``tidings`` commands share: the options naming the store and Kafka, and how they fail.

Every long-running command reads the same environment (``DATABASE_URL``, ``TIDINGS_SCHEMA``,
``KAFKA_BOOTSTRAP_SERVERS``, ``TIDINGS_KAFKA_<NAME>``, and ``TIDINGS_LEADER_URL`` for those that elect
leaders), so one container spec serves them all.
"""

from __future__ import annotations

from typing import Annotated

import sqlalchemy.exc
import typer

from eventstore import ConfigurationError, PostgresEventStore, StoreConfig, current_revision, head_revision
from eventstore.errors import StoreUnavailable

__all__ = [
    "AsJson",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "KAFKA_ENV_PREFIX",
    "Bootstrap",
    "DatabaseUrl",
    "Kafka",
    "LeaderUrl",
    "Schema",
    "fail",
    "kafka_settings",
    "migrated_store",
    "open_store",
    "required",
]

EXIT_FAILED = 1
EXIT_USAGE = 2
KAFKA_ENV_PREFIX = "TIDINGS_KAFKA_"

DatabaseUrl = Annotated[
    str,
    typer.Option(
        envvar="DATABASE_URL", show_default=False, help="PostgreSQL URL (libpq form); read from DATABASE_URL."
    ),
]
Schema = Annotated[str, typer.Option(envvar="TIDINGS_SCHEMA", help="PostgreSQL schema of the store.")]
LeaderUrl = Annotated[
    str,
    typer.Option(
        envvar="TIDINGS_LEADER_URL",
        show_default=False,
        help="Session-mode PostgreSQL URL for the leaders' advisory locks (relays, global-order handlers), "
        "when DATABASE_URL goes through PgBouncer in transaction mode; same database. Default: DATABASE_URL.",
    ),
]
"""Every leadership of a store takes its lock through it (``StoreConfig.leader_url``)."""
Bootstrap = Annotated[
    str,
    typer.Option(
        envvar="KAFKA_BOOTSTRAP_SERVERS",
        show_default=False,
        help="Kafka bootstrap servers; read from KAFKA_BOOTSTRAP_SERVERS.",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of text or tables.")]
"""Every command that reports takes --json: people read the tables, scripts the JSON."""
Kafka = Annotated[
    list[str] | None,
    typer.Option(help="A librdkafka setting, name=value (repeatable); also TIDINGS_KAFKA_<NAME>."),
]


def kafka_settings(pairs: list[str], environ: dict[str, str]) -> dict[str, str]:
    """librdkafka settings from ``name=value`` pairs and ``TIDINGS_KAFKA_<NAME>`` variables (pairs win)."""
    settings = {
        name[len(KAFKA_ENV_PREFIX) :].lower().replace("_", "."): value
        for name, value in environ.items()
        if name.startswith(KAFKA_ENV_PREFIX) and len(name) > len(KAFKA_ENV_PREFIX)
    }
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigurationError(f"--kafka takes name=value (a librdkafka setting), got {pair!r}")
        settings[name.strip()] = value
    return settings


def required(value: str, what: str) -> str:
    if not value:
        raise ConfigurationError(f"{what} is required")
    return value


def migrated_store(database_url: str, schema: str, leader_url: str = "") -> StoreConfig:
    """The store's config, once its schema is known to be migrated.

    Raises:
        ConfigurationError: no URL, a bad one, or a store that is not migrated.
        StoreUnavailable: PostgreSQL could not be reached.
    """
    config = StoreConfig(
        required(database_url, "--database-url / DATABASE_URL"), schema, leader_url=leader_url or None
    )
    try:
        revision = current_revision(config)
    except sqlalchemy.exc.OperationalError as exc:
        raise StoreUnavailable(f"cannot reach PostgreSQL: {exc.orig}".strip()) from exc
    if revision != head_revision():
        raise ConfigurationError(
            f"the store in schema {schema!r} is not migrated: run `tidings migrate` first"
        )
    return config


def open_store(database_url: str, schema: str) -> PostgresEventStore:
    """A reader's store (no sequencer) on a migrated schema, or the command's exit: 2 for what the user
    must fix (no URL, an unmigrated store), 1 when PostgreSQL does not answer."""
    try:
        return PostgresEventStore(migrated_store(database_url, schema), sequencer=False)
    except ConfigurationError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    except StoreUnavailable as exc:
        raise fail(str(exc), EXIT_FAILED) from exc


def fail(message: str, code: int) -> typer.Exit:
    """Say ``message`` on stderr and end with ``code``: ``raise fail(...)``."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)
