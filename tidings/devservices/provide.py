"""Choose how PostgreSQL and Kafka are provided, and provide them for the length of a ``with`` block.

Order of choice, for each service on its own:

1. the environment: ``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS`` point at a running service;
2. testcontainers, when a Docker engine answers;
3. local processes: PostgreSQL from the server binaries, Kafka from its Maven Central jars.

``TIDINGS_SERVICES=local`` or ``=docker`` forces route 3 or 2 (the environment still wins).
The tests, the benchmarks and the demo all come through here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import psycopg

from eventstore import redact_url
from tidings.devservices.containers import docker_available, kafka_container, postgres_container
from tidings.devservices.errors import ServiceError, ServiceStartFailed
from tidings.devservices.jars import jars_cached, require_mvn
from tidings.devservices.local_kafka import LocalKafka, check_java, wait_for_kafka
from tidings.devservices.local_postgres import LocalPostgres, check_postgres_prerequisites
from tidings.devservices.runs import sweep_stale_runs

__all__ = [
    "Service",
    "Services",
    "check_local_prerequisites",
    "kafka",
    "postgres",
    "preflight",
    "route",
    "services",
]

Kind = Literal["postgres", "kafka"]
Source = Literal["environment", "docker", "local"]

ENV_VARS: dict[Kind, str] = {"postgres": "DATABASE_URL", "kafka": "KAFKA_BOOTSTRAP_SERVERS"}


def _environment_timeout() -> float:
    """How long a service named by the environment may take to answer: ``$TIDINGS_SERVICE_WAIT`` (s)."""
    return float(os.environ.get("TIDINGS_SERVICE_WAIT", "30"))


@dataclass(frozen=True, slots=True)
class Service:
    """A running service: where to reach it, how it was provided, where its log is (local route only)."""

    kind: Kind
    address: str
    source: Source
    log_path: Path | None = None
    started_in: float = 0.0


@dataclass(frozen=True, slots=True)
class Services:
    postgres: Service
    kafka: Service


def route(kind: Kind) -> Source:
    """How ``kind`` would be provided right now."""
    if os.environ.get(ENV_VARS[kind]):
        return "environment"
    forced = os.environ.get("TIDINGS_SERVICES", "auto")
    if forced not in ("auto", "local", "docker"):
        raise ServiceError(f"TIDINGS_SERVICES={forced!r}: expected auto, local or docker")
    if forced == "local":
        return "local"
    if forced == "docker" or docker_available():
        return "docker"
    return "local"


def preflight(kinds: tuple[Kind, ...] = ("postgres", "kafka")) -> None:
    """Check what the local route of each service needs, before anything is started.

    Raises:
        MissingPrerequisite: the first missing program, with how to get it.
    """
    for kind in kinds:
        if route(kind) == "local":
            check_local_prerequisites(kind)


def check_local_prerequisites(kind: Kind) -> None:
    """Raise MissingPrerequisite if the local route of ``kind`` cannot run on this machine."""
    if kind == "postgres":
        check_postgres_prerequisites()
    else:
        check_java()
        if not jars_cached():
            require_mvn()


class _LocalService(Protocol):
    @property
    def log_path(self) -> Path: ...
    def start(self) -> str: ...
    def stop(self) -> None: ...


@contextmanager
def _provide(
    kind: Kind,
    wait_for: Callable[[str], None],
    container: Callable[[], AbstractContextManager[str]],
    local: Callable[[], _LocalService],
) -> Iterator[Service]:
    started = time.monotonic()
    source = route(kind)

    def ready(address: str, log_path: Path | None = None) -> Service:
        return Service(kind, address, source, log_path, time.monotonic() - started)

    if source == "environment":
        address = os.environ[ENV_VARS[kind]]
        wait_for(address)
        yield ready(address)
    elif source == "docker":
        with container() as address:
            yield ready(address)
    else:
        check_local_prerequisites(kind)
        sweep_stale_runs()
        server = local()
        try:
            yield ready(server.start(), server.log_path)
        finally:
            server.stop()


@contextmanager
def postgres() -> Iterator[Service]:
    """PostgreSQL for the duration of the block.

    Raises:
        MissingPrerequisite: the local route lacks server binaries (or, as root, the postgres account).
        ServiceStartFailed: the service did not become ready, or DATABASE_URL does not answer.
    """
    with _provide("postgres", _wait_for_postgres, postgres_container, LocalPostgres) as service:
        yield service


@contextmanager
def kafka() -> Iterator[Service]:
    """Apache Kafka for the duration of the block.

    Raises:
        MissingPrerequisite: the local route lacks java (or, for the first jar fetch, mvn).
        ServiceStartFailed: the broker did not become ready, or KAFKA_BOOTSTRAP_SERVERS does not answer.
    """
    with _provide("kafka", _wait_for_kafka, kafka_container, LocalKafka) as service:
        yield service


@contextmanager
def services() -> Iterator[Services]:
    """Both services for the duration of the block; stopped in reverse order."""
    preflight()
    with ExitStack() as stack:
        pg = stack.enter_context(postgres())
        broker = stack.enter_context(kafka())
        yield Services(pg, broker)


def _wait_for_kafka(bootstrap: str) -> None:
    try:
        wait_for_kafka(bootstrap, _environment_timeout())
    except TimeoutError as exc:
        raise ServiceStartFailed(
            "kafka", f"KAFKA_BOOTSTRAP_SERVERS={bootstrap} does not answer: {exc}"
        ) from exc


def _wait_for_postgres(url: str) -> None:
    deadline = time.monotonic() + _environment_timeout()
    while True:
        try:
            with psycopg.connect(url, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.Error as exc:
            if time.monotonic() > deadline:
                raise ServiceStartFailed(
                    "postgres", f"DATABASE_URL={redact_url(url)} does not answer: {exc}"
                ) from exc
            time.sleep(0.5)
