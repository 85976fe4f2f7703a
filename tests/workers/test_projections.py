"""Projections: read models written exactly once per event, and strong consistency through them."""

from __future__ import annotations

import uuid
from decimal import Decimal

import sqlalchemy as sa
from psycopg import sql

from eventstore import PostgresEventStore
from examples.bank.accounts import Deposit, OpenAccount, accounts
from examples.bank.events import AccountOpened, MoneyDeposited, events
from tests.tidings.avro_support import SCHEMAS
from tests.workers.worker_support import Noted, Tally, append_noted, counters, eventually, read, stack
from tidings import Application, EventMapper
from tidings.avro import AvroCodec, SchemaSet
from tidings.pytest_plugin import KafkaNamespace
from workers.delivery import EventMetadata
from workers.failure import ErrorAnswer, FailureContext, Retry
from workers.handler import BatchFailed
from workers.projection import Projection

BANK = EventMapper(AvroCodec(events, SchemaSet.load(SCHEMAS)))


def test_projection_effects_happen_once_across_failures_and_restarts(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    table = counters(event_store)
    failures = {"left": 2}
    after_update: list[int] = []
    with stack(event_store, kafka_namespace, partitions=2) as s:

        class Counting(Tally):
            name = s.name("counting")
            tables = (table,)
            concurrency = 2

            def project(self, event: Noted, metadata: EventMetadata, connection: sa.Connection) -> None:
                super().project(event, metadata, connection)
                if event.n == 7 and metadata.stream_id == "s3" and failures["left"]:
                    failures["left"] -= 1
                    raise RuntimeError("after writing: the transaction must roll back")

            def after_update(self, event: Noted, metadata: EventMetadata) -> None:
                after_update.append(metadata.event_number)

            def error(self, error: BaseException, event: object, context: FailureContext) -> ErrorAnswer:
                return Retry()

        first = append_noted(event_store, streams=6, per_stream=10)
        runner = s.run(Counting)
        eventually(lambda: len(after_update) >= 20, what="some projected")
        runner.stop()  # mid-stream: what is committed stays, the rest is redone by the next run
        s.run(Counting)
        second = append_noted(event_store, streams=6, per_stream=5, prefix="s")
        total = len(first) + len(second)
        eventually(
            lambda: read(event_store, "SELECT coalesce(sum(events), 0) FROM counters")[0][0] >= total,
            what="every event projected",
        )
        rows = dict(read(event_store, "SELECT stream_id, events FROM counters"))
    assert rows == {f"s{i}": 15 for i in range(6)}, "each event's effect exactly once"
    assert sorted(after_update) == sorted(set(after_update)), "after_update once per committed event"
    checkpoints = read(event_store, "SELECT topic, partition, event_number FROM handler_checkpoints")
    assert {partition for _, partition, _ in checkpoints} == {0, 1}


def test_strong_dispatch_returns_after_the_projection_shows_the_change(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    with event_store.connection() as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {} (account uuid PRIMARY KEY, balance numeric NOT NULL)").format(
                sql.Identifier(event_store.config.schema, "balances")
            )
        )
    balances = sa.Table(
        "balances",
        sa.MetaData(),
        sa.Column("account", sa.Uuid, primary_key=True),
        sa.Column("balance", sa.Numeric, nullable=False),
        schema=event_store.config.schema,
    )
    with stack(event_store, kafka_namespace, partitions=2, mapper=BANK) as s:

        class Balances(Projection):
            name = s.name("balances")
            tables = (balances,)
            consistency = "strong"

            def project(self, event: object, metadata: EventMetadata, connection: sa.Connection) -> None:
                match event:
                    case AccountOpened(account_id=account):
                        self.upsert(connection, balances, {"account": account, "balance": 0}, key=["account"])
                    case MoneyDeposited(account_id=account, balance=balance):
                        self.upsert(
                            connection, balances, {"account": account, "balance": balance}, key=["account"]
                        )

        runner = s.run(Balances)
        eventually(lambda: runner.status.state == "running", what="the projection runs")
        app = Application(event_store, BANK, accounts)
        account = uuid.uuid4()
        app.dispatch(OpenAccount(account, "Ada"), consistency="strong", timeout=30)
        for amount in ("10.00", "5.50", "1.25"):
            app.dispatch(Deposit(account, Decimal(amount)), consistency="strong", timeout=30)
            # No polling: the read model already shows the deposit when dispatch returns.
            (balance,) = read(event_store, f"SELECT balance FROM balances WHERE account = '{account}'")[0]
            expected = {"10.00": "10.00", "5.50": "15.50", "1.25": "16.75"}[amount]
            assert balance == Decimal(expected)


def test_project_batch_writes_a_poll_at_once_exactly_once_and_isolates_a_failure(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    table = counters(event_store)
    calls: list[list[int]] = []
    poisoned = {"s2": 2}  # s2's event n=2 fails twice, then goes through
    with stack(event_store, kafka_namespace, partitions=2) as s:

        class Bulk(Projection):
            name = s.name("bulk")
            tables = (table,)

            def project_batch(
                self, batch: list[tuple[Noted, EventMetadata]], connection: sa.Connection
            ) -> None:
                calls.append([metadata.event_number for _, metadata in batch])
                connection.execute(
                    sa.text(
                        f'INSERT INTO "{table.schema}".counters VALUES (:s, 1, :n) ON CONFLICT (stream_id) '
                        "DO UPDATE SET events = counters.events + 1, last_n = excluded.last_n"
                    ),
                    [{"s": metadata.stream_id, "n": event.n} for event, metadata in batch],
                )
                for i, (event, _) in enumerate(batch):
                    if event.n == 2 and poisoned.get(event.key, 0) > 0:
                        poisoned[event.key] -= 1
                        raise BatchFailed(i, RuntimeError("not yet"))

            def error(self, error: BaseException, event: object, context: FailureContext) -> ErrorAnswer:
                return Retry()

        appended = append_noted(event_store, streams=4, per_stream=6)
        s.run(Bulk)
        eventually(
            lambda: read(event_store, "SELECT coalesce(sum(events), 0) FROM counters")[0][0] >= len(appended),
            what="every event projected",
        )
        rows = dict(read(event_store, "SELECT stream_id, events FROM counters"))
    assert rows == {f"s{i}": 6 for i in range(4)}, "each event's effect once, the failed batch rolled back"
    assert any(len(call) > 1 for call in calls), "events came in batches"
    assert poisoned == {"s2": 0}
