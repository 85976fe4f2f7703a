"""Is this deployment able to work? One check per dependency, each with a verdict and a detail.

Used by ``tidings health`` (and the README's first command) today; the workers' readiness endpoints use
the same checks later.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg
from confluent_kafka.admin import AdminClient

from eventstore import StoreConfig, StoreMoved, current_revision, head_revision, redact_url
from eventstore.rebase import moved

__all__ = ["Check", "HealthReport", "check_health"]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float


@dataclass(frozen=True, slots=True)
class HealthReport:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


def check_postgres(store: StoreConfig) -> Check:
    started = time.monotonic()
    try:
        with psycopg.connect(store.url, connect_timeout=5) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        version = row[0] if row else "?"
    except psycopg.Error as exc:
        return Check("postgres", False, f"{redact_url(store.url)}: {exc}".strip(), time.monotonic() - started)
    return Check(
        "postgres", True, f"PostgreSQL {version} at {redact_url(store.url)}", time.monotonic() - started
    )


def check_schema(store: StoreConfig) -> Check:
    started = time.monotonic()
    head = head_revision()
    try:
        current = current_revision(store)
    except Exception as exc:  # noqa: BLE001 - any failure to read the version is reported, not raised
        return Check("schema", False, f"{store.schema}: {type(exc).__name__}", time.monotonic() - started)
    if current != head:
        return Check(
            "schema",
            False,
            f"{store.schema} at revision {current or 'none'}, expected {head}: run `tidings migrate`",
            time.monotonic() - started,
        )
    try:
        with psycopg.connect(store.url, connect_timeout=5) as conn:
            was_moved = moved(conn, store.schema)
    except psycopg.Error as exc:
        return Check("schema", False, f"{store.schema}: {exc}".strip(), time.monotonic() - started)
    if was_moved:
        error = StoreMoved(store.schema)
        return Check(
            "schema",
            False,
            f"{store.schema} holds transaction ids of another PostgreSQL cluster and numbers nothing: "
            f"run `{error.command}`",
            time.monotonic() - started,
        )
    return Check("schema", True, f"{store.schema} at revision {head}", time.monotonic() - started)


def check_kafka(
    bootstrap_servers: str, settings: Mapping[str, str] | None = None, timeout: float = 10.0
) -> Check:
    """Ask the brokers for metadata, with the deployment's librdkafka ``settings`` (SASL, TLS)."""
    started = time.monotonic()
    admin = AdminClient({**(settings or {}), "bootstrap.servers": bootstrap_servers, "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - librdkafka raises KafkaException for every failure
        return Check("kafka", False, f"{bootstrap_servers}: {exc}", time.monotonic() - started)
    detail = f"{len(metadata.brokers)} broker(s), cluster {metadata.cluster_id} at {bootstrap_servers}"
    return Check("kafka", bool(metadata.brokers), detail, time.monotonic() - started)


def check_health(
    store: StoreConfig, bootstrap_servers: str, kafka: Mapping[str, str] | None = None
) -> HealthReport:
    """Check PostgreSQL, the store's schema revision and Kafka; never raises for an unhealthy dependency."""
    postgres = check_postgres(store)
    schema = check_schema(store) if postgres.ok else Check("schema", False, "PostgreSQL unreachable", 0.0)
    return HealthReport((postgres, schema, check_kafka(bootstrap_servers, kafka)))
