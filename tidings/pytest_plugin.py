"""pytest fixtures for tests that need the real PostgreSQL and the real Kafka.

Installed with tidings as a pytest plugin (entry point ``pytest11``), so an application's own tests get
the same fixtures as tidings' tests. Services are provided once per test session through
``tidings.devservices`` (environment, Docker, or local processes); each test then gets data of its own:

- ``postgres_schema``: a fresh PostgreSQL schema, dropped afterwards; its ``url`` sets ``search_path``.
- ``event_store``: a migrated ``PostgresEventStore`` in that schema, closed afterwards.
- ``kafka_namespace``: unique topic and consumer-group prefixes; topics and groups with the prefix are
  deleted afterwards.
- ``aggregate_test``: ``tidings.testing``, given/when/then helpers for aggregates (no services).

Example::

    def test_round_trip(postgres_schema, kafka_namespace):
        with psycopg.connect(postgres_schema.url) as conn:
            conn.execute("CREATE TABLE t (x int)")
        topic = kafka_namespace.create_topic("events", partitions=3)

A service that cannot be provided makes the fixture raise: the test errors, it is never skipped.
With ``--fail-on-skip`` (used by tidings' own CI) any skipped test turns the session into a failure.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from psycopg import sql

from eventstore import PostgresEventStore, StoreConfig, migrate, sqlalchemy_url
from tidings import devservices

__all__ = ["KafkaNamespace", "PostgresSchema"]

ADMIN_TIMEOUT_SECONDS = 30.0


def _slug(text: str, limit: int) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit] or "test"


@dataclass(frozen=True, slots=True)
class PostgresSchema:
    """A schema that belongs to one test.

    Attributes:
        name: the schema's name.
        server_url: the cluster's URL, search_path untouched.
        url: a libpq URL whose connections have ``search_path`` set to the schema.
    """

    name: str
    server_url: str

    @property
    def url(self) -> str:
        joiner = "&" if "?" in self.server_url else "?"
        return f"{self.server_url}{joiner}options=-csearch_path%3D{self.name}"

    @property
    def sqlalchemy_url(self) -> str:
        return sqlalchemy_url(self.url)


@dataclass
class KafkaNamespace:
    """Topic and consumer-group names that belong to one test.

    Attributes:
        bootstrap_servers: the broker address.
        prefix: shared by every topic and group this namespace names.
    """

    bootstrap_servers: str
    prefix: str
    _admin: AdminClient = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})

    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def group(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def create_topic(self, name: str, partitions: int = 1, config: dict[str, str] | None = None) -> str:
        """Create ``<prefix><name>`` and wait until the broker confirms it; return the full name."""
        full = self.topic(name)
        futures = self._admin.create_topics(
            [NewTopic(full, num_partitions=partitions, replication_factor=1, config=config or {})],
            operation_timeout=ADMIN_TIMEOUT_SECONDS,
        )
        futures[full].result(timeout=ADMIN_TIMEOUT_SECONDS)
        return full

    def cleanup(self) -> None:
        """Delete every topic and consumer group carrying the prefix (best effort)."""
        topics = [
            t
            for t in self._admin.list_topics(timeout=ADMIN_TIMEOUT_SECONDS).topics
            if t.startswith(self.prefix)
        ]
        if topics:
            for future in self._admin.delete_topics(topics, operation_timeout=ADMIN_TIMEOUT_SECONDS).values():
                future.result(timeout=ADMIN_TIMEOUT_SECONDS)
        listing = self._admin.list_consumer_groups(request_timeout=ADMIN_TIMEOUT_SECONDS).result()
        groups = [g.group_id for g in listing.valid if g.group_id.startswith(self.prefix)]
        if groups:
            for future in self._admin.delete_consumer_groups(
                groups, request_timeout=ADMIN_TIMEOUT_SECONDS
            ).values():
                future.result(timeout=ADMIN_TIMEOUT_SECONDS)


@pytest.fixture(scope="session")
def postgres_service() -> Iterator[devservices.Service]:
    """PostgreSQL for the whole session (started on first use, stopped at the end)."""
    with devservices.postgres() as service:
        yield service


@pytest.fixture(scope="session")
def kafka_service() -> Iterator[devservices.Service]:
    """Kafka for the whole session (started on first use, stopped at the end)."""
    with devservices.kafka() as service:
        yield service


@pytest.fixture
def postgres_schema(
    postgres_service: devservices.Service, request: pytest.FixtureRequest
) -> Iterator[PostgresSchema]:
    """A fresh schema for this test, dropped with everything in it afterwards."""
    name = f"t_{_slug(request.node.name, 40)}_{uuid.uuid4().hex[:8]}"
    schema = PostgresSchema(name, postgres_service.address)
    with psycopg.connect(postgres_service.address, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield schema
    with psycopg.connect(postgres_service.address, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def event_store(postgres_schema: PostgresSchema) -> Iterator[PostgresEventStore]:
    """A migrated event store in this test's schema, with its sequencer running."""
    config = StoreConfig(postgres_schema.server_url, postgres_schema.name)
    migrate(config)
    store = PostgresEventStore(config)
    yield store
    store.close()


@pytest.fixture
def kafka_namespace(
    kafka_service: devservices.Service, request: pytest.FixtureRequest
) -> Iterator[KafkaNamespace]:
    """Unique topic and group names for this test; what carries the prefix is deleted afterwards."""
    namespace = KafkaNamespace(
        kafka_service.address, f"t.{_slug(request.node.name, 40)}.{uuid.uuid4().hex[:8]}."
    )
    yield namespace
    namespace.cleanup()


# --- --fail-on-skip ----------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tidings")
    group.addoption(
        "--fail-on-skip",
        action="store_true",
        default=False,
        help="fail the session if any test or module was skipped (a missing service must never pass)",
    )


class _SkipCounter:
    def __init__(self) -> None:
        self.skipped: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skipped.append(report.nodeid)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped:
            self.skipped.append(report.nodeid)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.skipped and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.skipped:
            terminalreporter.write_line(
                f"--fail-on-skip: {len(self.skipped)} skipped, which fails this run: "
                + ", ".join(self.skipped[:10]),
                red=True,
            )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--fail-on-skip"):
        config.pluginmanager.register(_SkipCounter(), "tidings-fail-on-skip")


# --- pure aggregate tests ----------------------------------------------------------------------------


@pytest.fixture
def aggregate_test() -> Any:
    """The ``tidings.testing`` module: given/when/then helpers for aggregates, needing no services.

    Example::

        def test_deposit(aggregate_test):
            aggregate_test.assert_events(BankAccount, given=[opened], when=deposit, then=[deposited])
            aggregate_test.given(BankAccount, opened).when(withdraw).raises(InsufficientFunds)
    """
    from tidings import testing

    return testing
