"""What a worker process runs (``WorkerApp``) and how it reaches PostgreSQL and Kafka (``WorkerConfig``).

``tidings worker bank.workers:app`` loads a ``WorkerApp`` from the user's code: the application's name
(its events topic is ``<name>.events``, as for ``tidings relay --app``), the mapper that decodes its
events, the relay's routing when it has one, and its handlers. ``WorkerConfig`` comes from the
environment and the command line, so one image runs in every environment.

The name is also the ``application`` every handler, projection and process manager sees in its
events' metadata (``EventMetadata.application``, Commanded's ``application``). An app run per tenant
is built by its factory, which names it (``acme.bank``, say).

Handlers' options can be given at start, as Commanded's ``start_link(start_from: :current)``: a
handler's ``configured(...)`` in the list, or ``with_overrides`` by name (what ``tidings worker APP
--set NAME.OPTION=VALUE`` does).

Example::

    app = WorkerApp("bank", mapper=EventMapper(codec), handlers=[Balances, WelcomeEmails])
    app = app.with_overrides({"welcome-emails": {"start_from": "current"}})
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from eventstore.config import sqlalchemy_url
from eventstore.errors import ConfigurationError
from eventstore.postgres.store import PostgresEventStore
from eventstore.postgres.store import _session_options as session_options
from eventstore.routing import Routing
from tidings.mapper import EventMapper
from tidings.router import Router
from workers.handler import EventHandler, InvalidOverride, validate_handler

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["Tenant", "WorkerApp", "WorkerConfig"]

_TENANT = re.compile(r"[a-z][a-z0-9_]{0,39}")


@dataclass(frozen=True, slots=True)
class Tenant:
    """One tenant of an application run per tenant (``tidings worker APP --tenant NAME``): its own
    PostgreSQL schema, and (the factory's part) its own topic prefix and handler names.

    An app factory that takes a ``Tenant`` builds the tenant's app: ``build(tenant)``.
    """

    name: str
    schema: str

    def __post_init__(self) -> None:
        check_tenant(self.name)


def check_tenant(name: str) -> str:
    """``name`` if it can name a tenant, else ``ConfigurationError`` saying what a name may be."""
    if not _TENANT.fullmatch(name):
        raise ConfigurationError(
            f"a tenant's name must be 1-40 of a-z 0-9 _, starting with a letter (it names the tenant's "
            "schema, topics and groups), "
            f"got {name!r}"
        )
    return name


@dataclass
class WorkerApp:
    """An application's handlers and what they need to read its events.

    ``name`` names the application: its events topic (``<name>.events`` by default) and the
    ``application`` of its handlers' metadata.
    """

    name: str
    mapper: EventMapper
    handlers: Sequence[type[EventHandler]] = ()
    routing: Routing | None = None
    """The relay's routing (default: every event on ``<name>.events``, keyed by stream id)."""
    router: Router | None = None
    """The application's command router: process managers dispatch their commands through it."""
    receive_commands: bool = False
    """Execute the commands other applications send to ``<name>.commands`` (their process managers'
    ``external`` commands), each once, through ``router`` (``workers.command_receiver``)."""

    def __post_init__(self) -> None:
        if self.receive_commands and self.router is None:
            raise ConfigurationError(
                f"{self.name} receives commands: give the WorkerApp the router that executes them "
                "(WorkerApp(..., router=router, receive_commands=True))"
            )
        names = [validate_handler(handler).name for handler in self.handlers]
        managers = [h.name for h in self.handlers if _is_process_manager(h)]
        if managers and self.router is None:
            raise ConfigurationError(
                f"process managers {managers} dispatch commands: give the WorkerApp the application's "
                "router (WorkerApp(..., router=router))"
            )
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigurationError(
                f"handler names must be unique (they name consumer groups): {duplicates}"
            )

    def routing_for(self, config: WorkerConfig | None = None) -> Routing:
        return self.routing or Routing(f"{self.name}.events")

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> WorkerApp:
        """This app with options given at start: handler name -> {option: value}, each handler given
        its own through ``configured`` (and checked as its class attributes are).

        A name is a handler's name or, in an app run per tenant, the end of one after a dot
        (``balances`` for ``acme.balances``) when only one handler's name ends so.

        Example::

            app.with_overrides({"welcome-emails": {"start_from": "current", "concurrency": 2}})

        Raises:
            InvalidOverride: a name that is none of the app's handlers (the message lists them), an
                option a handler does not take, or a value it refuses.
        """
        handlers = list(self.handlers)
        for name, options in overrides.items():
            index = self._index_of(name, options)
            handlers[index] = handlers[index].configured(**options)
        return dataclasses.replace(self, handlers=handlers)

    def _index_of(self, name: str, options: Mapping[str, Any]) -> int:
        names = [handler.name for handler in self.handlers]
        if name in names:
            return names.index(name)
        ending = [i for i, n in enumerate(names) if n.endswith(f".{name}")]
        if len(ending) == 1:
            return ending[0]
        given = ", ".join(f"{name}.{option}={value}" for option, value in options.items())
        why = f"several handlers' names end with {name!r}" if ending else f"no handler is named {name!r}"
        raise InvalidOverride(
            f"cannot give {given} at start: {why} in the app {self.name!r}; its handlers: {names}"
        )

    def handler(self, name: str) -> type[EventHandler]:
        for handler in self.handlers:
            if handler.name == name:
                return handler
        raise ConfigurationError(f"no handler named {name!r}; this app has {[h.name for h in self.handlers]}")


def _is_process_manager(handler: type[EventHandler]) -> bool:
    from workers.process_manager import ProcessManager

    return issubclass(handler, ProcessManager)


@dataclass
class WorkerConfig:
    """How a worker reaches PostgreSQL and Kafka.

    Attributes:
        store: the event store (positions, parked events and acknowledgements live in its schema).
        bootstrap_servers: the Kafka cluster.
        kafka: further librdkafka settings (security, SASL, SSL, timeouts).
        partitions, replication_factor: for the topics the worker creates (repartitioning, dead
            letters, and the events topics if the relay has not created them yet); -1: broker defaults.
        max_poll_records: messages taken from the consumer at a time.
        shutdown_timeout: seconds a stop waits for the messages in flight.
        instance_id: this member's stable id for static membership (a StatefulSet pod's name).
        acknowledgement_ttl: seconds after which strongly consistent handlers' acknowledgements of a
            stream nobody appended to since are deleted (they would otherwise grow without bound).
    """

    store: PostgresEventStore
    bootstrap_servers: str
    kafka: Mapping[str, str] = field(default_factory=dict)
    partitions: int = -1
    replication_factor: int = -1
    max_poll_records: int = 500
    shutdown_timeout: float = 30.0
    instance_id: str = ""
    acknowledgement_ttl: float = 3600.0
    _engine: sa.Engine | None = field(default=None, init=False, repr=False)
    _engine_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.bootstrap_servers:
            raise ConfigurationError("the worker needs Kafka's bootstrap servers (KAFKA_BOOTSTRAP_SERVERS)")
        if self.max_poll_records < 1:
            raise ConfigurationError("max_poll_records must be 1 or more")

    def __repr__(self) -> str:
        # Kafka settings may hold secrets (sasl.password): only their names.
        return (
            f"WorkerConfig(schema={self.store.config.schema!r}, "
            f"bootstrap_servers={self.bootstrap_servers!r}, "
            f"kafka={sorted(self.kafka)})"
        )

    def connection(self) -> dict[str, str | int | float | bool]:
        """The librdkafka settings every client of the worker shares."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.kafka}

    def engine(self) -> sa.Engine:
        """The SQLAlchemy engine projections and process managers write through (created on first use,
        shared).

        Its sessions carry the store's bounds (``StoreConfig.idle_in_transaction_timeout`` and
        ``statement_timeout``, with the URL's own options): a transaction left idle (a slow ``project``,
        a sleep) or a statement running past them is ended by PostgreSQL, so it cannot hold back the
        cluster-wide numbering horizon for longer; the unit is rolled back and done again, as for any
        lost connection. A projection that needs longer says so in its transaction
        (``SET LOCAL statement_timeout = '5min'``).
        """
        import sqlalchemy as sa

        with self._engine_lock:
            if self._engine is None:
                self._engine = sa.create_engine(
                    # No ping per checkout (a round trip per transaction): a connection found dead fails
                    # its unit, which the lane does again on a fresh one.
                    sqlalchemy_url(self.store.config.url),
                    pool_size=8,
                    max_overflow=8,
                    connect_args={"options": session_options(self.store.config)},
                )
            return self._engine

    def dispose(self) -> None:
        with self._engine_lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
