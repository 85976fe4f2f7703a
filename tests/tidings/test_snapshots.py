"""Snapshots and the cache on the real PostgreSQL: a 10,000-event account rehydrates from its snapshot."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from eventstore import PostgresEventStore, SnapshotData
from examples.bank.accounts import BankAccount, Deposit, OpenAccount, accounts
from examples.bank.events import AccountOpened, MoneyDeposited, events
from tests.tidings.avro_support import SCHEMAS
from tidings import AggregateCache, Application, EventMapper
from tidings.avro import AvroCodec, SchemaSet
from tidings.snapshotting import Snapshotting

MAPPER = EventMapper(AvroCodec(events, SchemaSet.load(SCHEMAS)))
SOURCE_TYPE = f"{BankAccount.__module__}.{BankAccount.__qualname__}"
EVENTS = 10_000


def long_account(store: PostgresEventStore) -> tuple[uuid.UUID, str]:
    """An account with 10,000 deposits of 0.01, appended straight to the store in large batches."""
    account, at = uuid.uuid4(), datetime(2026, 1, 1, tzinfo=UTC)
    stream = f"account-{account}"
    history: list[object] = [AccountOpened(account, "Ada", "EUR", at, Decimal("0.00"))]
    history += [MoneyDeposited(account, Decimal("0.01"), Decimal(n) / 100, at) for n in range(1, EVENTS + 1)]
    for start in range(0, len(history), 1000):
        store.append_to_stream(
            stream, start, [MAPPER.to_event_data(e) for e in history[start : start + 1000]]
        )
    return account, stream


def uncached(store: PostgresEventStore, version: int) -> Application:
    return Application(
        store,
        MAPPER,
        accounts,
        cache=AggregateCache(max_aggregates=0),
        snapshotting={BankAccount: Snapshotting(every=1000, version=version)},
    )


def test_a_long_stream_is_snapshotted_and_then_read_from_its_snapshot(
    event_store: PostgresEventStore,
) -> None:
    account, stream = long_account(event_store)
    first = uncached(event_store, version=1)
    state = first.dispatch(Deposit(account, Decimal("1.00")), returning="aggregate_state")
    assert state.balance == Decimal("101.00"), "the whole stream was replayed: 10,000 x 0.01 + 1.00"
    snapshot = event_store.read_snapshot(SOURCE_TYPE, stream, 1)
    assert snapshot is not None
    assert snapshot.source_version == EVENTS + 2
    assert json.loads(snapshot.data)["balance"] == "101.00"

    # Prove the next load starts from the snapshot: plant one that disagrees with the events.
    planted = {**json.loads(snapshot.data), "balance": "5000.00"}
    event_store.record_snapshot(
        SnapshotData(SOURCE_TYPE, stream, EVENTS + 2, json.dumps(planted).encode(), 1, schema_id="json")
    )
    state = uncached(event_store, version=1).dispatch(
        Deposit(account, Decimal("1.00")), returning="aggregate_state"
    )
    assert state.balance == Decimal("5001.00"), "read from the snapshot, then only the events after it"


def test_a_new_snapshot_version_ignores_old_snapshots(event_store: PostgresEventStore) -> None:
    account, stream = long_account(event_store)
    event_store.record_snapshot(
        SnapshotData(SOURCE_TYPE, stream, EVENTS + 1, b'{"balance": "1.00", "account_id": null}', 1)
    )
    state = uncached(event_store, version=2).dispatch(
        Deposit(account, Decimal("1.00")), returning="aggregate_state"
    )
    assert state.balance == Decimal("101.00"), "the version-1 snapshot was ignored: the stream was replayed"
    renewed = event_store.read_snapshot(SOURCE_TYPE, stream, 2)
    assert renewed is not None
    assert renewed.source_version == EVENTS + 2


def test_an_unreadable_snapshot_falls_back_to_the_events(event_store: PostgresEventStore) -> None:
    account, stream = long_account(event_store)
    event_store.record_snapshot(SnapshotData(SOURCE_TYPE, stream, EVENTS + 1, b'{"balance": "not money"}', 1))
    state = uncached(event_store, version=1).dispatch(
        Deposit(account, Decimal("1.00")), returning="aggregate_state"
    )
    assert state.balance == Decimal("101.00")


def test_a_cached_aggregate_is_not_read_again_but_a_stale_one_catches_up(
    event_store: PostgresEventStore,
) -> None:
    app = Application(event_store, MAPPER, accounts, cache=AggregateCache(max_aggregates=10, lifespan=60))
    account = uuid.uuid4()
    app.dispatch(OpenAccount(account, "Ada"))
    assert app.cache.get(f"account-{account}") is not None
    # Another writer moves the stream; the cached state is stale until the append meets the new version.
    other = Application(event_store, MAPPER, accounts)
    other.dispatch(Deposit(account, Decimal("2.00")))
    result = app.dispatch(Deposit(account, Decimal("1.00")), returning="execution_result")
    assert (result.attempts, result.aggregate_state.balance) == (2, Decimal("3.00"))
