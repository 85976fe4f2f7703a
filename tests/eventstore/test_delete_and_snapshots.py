"""Soft and hard deletion, snapshots keyed by source type, and stores that share a database."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from eventstore import (
    ANY,
    NO_STREAM,
    EventData,
    HardDeleteDisabled,
    PostgresEventStore,
    SnapshotData,
    StoreConfig,
    StreamDeleted,
    StreamNotFound,
    WrongExpectedVersion,
    migrate,
)
from tidings.pytest_plugin import PostgresSchema


def _append(store: PostgresEventStore, stream: str, *payloads: bytes) -> None:
    store.append_to_stream(stream, ANY, [EventData("E", p) for p in payloads])


def test_soft_delete_refuses_appends_and_reads_but_keeps_the_global_order(
    event_store: PostgresEventStore,
) -> None:
    _append(event_store, "keep", b"1")
    _append(event_store, "gone", b"2", b"3")
    _append(event_store, "keep", b"4")
    with pytest.raises(WrongExpectedVersion):
        event_store.delete_stream("gone", 1)
    event_store.delete_stream("gone", 2)
    with pytest.raises(StreamDeleted):
        _append(event_store, "gone", b"5")
    with pytest.raises(StreamDeleted):
        event_store.append_to_stream("gone", NO_STREAM, [EventData("E", b"6")])
    with pytest.raises(StreamDeleted):
        event_store.read_stream_forward("gone")
    with pytest.raises(StreamDeleted):
        event_store.delete_stream("gone")
    assert event_store.stream_info("gone").deleted
    event_store.sequencer.catch_up()
    assert [e.data for e in event_store.read_all_forward()] == [b"1", b"2", b"3", b"4"]


def test_hard_delete_is_off_by_default(event_store: PostgresEventStore) -> None:
    _append(event_store, "s", b"1")
    with pytest.raises(HardDeleteDisabled, match="allow_hard_delete"):
        event_store.delete_stream("s", hard=True)
    assert len(event_store.read_stream_forward("s")) == 1


def test_hard_delete_removes_the_events_and_leaves_their_numbers_unused(
    postgres_schema: PostgresSchema,
) -> None:
    config = StoreConfig(postgres_schema.server_url, postgres_schema.name, allow_hard_delete=True)
    migrate(config)
    with PostgresEventStore(config) as store:
        _append(store, "keep", b"1")
        _append(store, "erase", b"personal data")
        _append(store, "keep", b"3")
        store.sequencer.catch_up()
        store.delete_stream("erase", hard=True)
        with pytest.raises(StreamNotFound):
            store.read_stream_forward("erase")
        remaining = store.read_all_forward()
        assert [(e.event_number, e.data) for e in remaining] == [(1, b"1"), (3, b"3")]
        assert store.last_event_number() == 3
        # New events keep counting after the hole; the stream id may be used afresh.
        _append(store, "erase", b"new")
        assert store.sequencer.catch_up() == 4
        assert [e.stream_version for e in store.read_stream_forward("erase")] == [1]


def test_snapshots_of_two_source_types_sharing_an_id_do_not_collide(event_store: PostgresEventStore) -> None:
    account = SnapshotData("BankAccount", "42", 7, b"account state")
    customer = SnapshotData("Customer", "42", 3, b"customer state")
    event_store.record_snapshot(account)
    event_store.record_snapshot(customer)
    read_account = event_store.read_snapshot("BankAccount", "42")
    read_customer = event_store.read_snapshot("Customer", "42")
    assert read_account is not None
    assert read_customer is not None
    assert (read_account.source_version, read_account.data) == (7, b"account state")
    assert (read_customer.source_version, read_customer.data) == (3, b"customer state")

    event_store.record_snapshot(SnapshotData("BankAccount", "42", 9, b"newer"))
    newer = event_store.read_snapshot("BankAccount", "42")
    assert newer is not None
    assert (newer.source_version, newer.data) == (9, b"newer")

    event_store.delete_snapshot("BankAccount", "42")
    assert event_store.read_snapshot("BankAccount", "42") is None
    assert event_store.read_snapshot("Customer", "42") is not None


def test_a_new_snapshot_version_invalidates_old_snapshots(event_store: PostgresEventStore) -> None:
    event_store.record_snapshot(SnapshotData("BankAccount", "1", 5, b"v1 format", snapshot_version=1))
    assert event_store.read_snapshot("BankAccount", "1", snapshot_version=2) is None
    assert event_store.read_snapshot("BankAccount", "1", snapshot_version=1) is not None


def test_stores_in_one_database_do_not_see_each_other(postgres_schema: PostgresSchema) -> None:
    one = StoreConfig(postgres_schema.server_url, f"{postgres_schema.name}_tenant_a")
    two = StoreConfig(postgres_schema.server_url, f"{postgres_schema.name}_tenant_b")
    for config in (one, two):
        migrate(config)
    try:
        with PostgresEventStore(one) as a, PostgresEventStore(two) as b:
            _append(a, "shared-id", b"a")
            _append(b, "shared-id", b"b1", b"b2")
            a.sequencer.catch_up()
            b.sequencer.catch_up()
            assert [e.data for e in a.read_all_forward()] == [b"a"]
            assert [e.data for e in b.read_all_forward()] == [b"b1", b"b2"]
            assert a.stream_info("shared-id").stream_version == 1
            assert [e.event_number for e in b.read_all_forward()] == [1, 2]
    finally:
        with psycopg.connect(postgres_schema.server_url, autocommit=True) as conn:
            for config in (one, two):
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(config.schema)))
