"""A store moved to another PostgreSQL cluster keeps numbering, in order.

A dump/restore or a logical-replication switchover (a blue/green major upgrade) carries the old
cluster's transaction ids in ``events.order_xid``, ``streams.last_xid`` and the sequencer's cursor,
while the new cluster's ids are lower. The move is simulated here by raising every stored id far above
the cluster's own (the relative order kept, as a move keeps it), with events committed but not yet
numbered at the moment of the move; one test makes the move for real, with pg_dump into a fresh cluster.
"""

from __future__ import annotations

import logging
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from prometheus_client import REGISTRY
from psycopg import sql

from eventstore import (
    ANY,
    EventData,
    PostgresEventStore,
    RecordedEvent,
    StoreConfig,
    StoreMoved,
    migrate,
    rebase,
)
from eventstore.postgres.store import COPY_AT
from tidings.devservices.local_postgres import LocalPostgres
from tidings.pytest_plugin import PostgresSchema

# Far above any id the test cluster will reach while the test runs: the old cluster's ids.
SHIFT = 10**12
DEADLINE = 30.0


@pytest.fixture
def config(postgres_schema: PostgresSchema) -> StoreConfig:
    config = StoreConfig(postgres_schema.server_url, postgres_schema.name)
    migrate(config)
    return config


def _append(store: PostgresEventStore, stream: str, label: str) -> EventData:
    event = EventData("E", label.encode())
    store.append_to_stream(stream, ANY, [event])
    return event


def _keys(config: StoreConfig) -> list[uuid.UUID]:
    """Event ids in the sequencer's (order_xid, id) order, as the database holds them now."""
    with psycopg.connect(config.url) as conn:
        rows = conn.execute(
            sql.SQL("SELECT event_id FROM {} ORDER BY order_xid, id").format(
                sql.Identifier(config.schema, "events")
            )
        ).fetchall()
    return [row[0] for row in rows]


def move_to_a_younger_cluster(config: StoreConfig, shift: int = SHIFT) -> None:
    """What a dump/restore into a cluster with lower transaction ids leaves behind."""
    table = {name: sql.Identifier(config.schema, name) for name in ("events", "streams", "sequencer")}
    with psycopg.connect(config.url) as conn:
        for statement in (
            "UPDATE {events} SET order_xid = (order_xid::text::bigint + %(shift)s)::text::xid8",
            "UPDATE {streams} SET last_xid = (last_xid::text::bigint + %(shift)s)::text::xid8",
            "UPDATE {sequencer} SET cursor_xid = (cursor_xid::text::bigint + %(shift)s)::text::xid8",
        ):
            conn.execute(sql.SQL(statement).format(**table), {"shift": shift})


def _all(store: PostgresEventStore) -> list[RecordedEvent]:
    return list(store.stream_all_forward())


def _wait_numbered(store: PostgresEventStore, count: int) -> list[RecordedEvent]:
    deadline = time.monotonic() + DEADLINE
    while True:
        events = _all(store)
        if len(events) >= count:
            return events
        assert time.monotonic() < deadline, (
            f"only {len(events)} of {count} events numbered after {DEADLINE}s: numbering stopped"
        )
        time.sleep(0.05)


@pytest.fixture
def writer(config: StoreConfig) -> Iterator[PostgresEventStore]:
    """A store that appends but numbers nothing by itself (the test numbers when it means to)."""
    store = PostgresEventStore(config, sequencer=False)
    yield store
    store.close()


def test_a_store_moved_to_a_younger_cluster_keeps_numbering(
    config: StoreConfig, writer: PostgresEventStore
) -> None:
    numbered_before = [_append(writer, s, f"n{i}") for i, s in enumerate(["a", "b", "a", "c", "b"])]
    assert writer.sequencer.catch_up() == len(numbered_before)
    # Committed in the old cluster but not numbered yet when it was dumped.
    waiting = [_append(writer, s, f"w{i}") for i, s in enumerate(["b", "d", "a", "a", "c"])]
    old_order = [e for e in _keys(config) if e in {w.event_id for w in waiting}]
    move_to_a_younger_cluster(config)

    migrate(config)  # what a deployment runs against the new cluster before the store starts
    with PostgresEventStore(config, sequencer_poll_interval=0.02) as store:
        after = [_append(store, s, f"new{i}") for i, s in enumerate(["a", "e", "d", "b", "e"])]
        events = _wait_numbered(store, len(numbered_before) + len(waiting) + len(after))

    assert [e.event_number for e in events] == list(range(1, len(events) + 1))  # gapless
    ids = [e.event_id for e in events]
    assert ids[: len(numbered_before)] == [e.event_id for e in numbered_before]  # numbers kept
    assert ids[len(numbered_before) : len(numbered_before) + len(waiting)] == old_order
    assert ids[len(numbered_before) + len(waiting) :] == [e.event_id for e in after]


def test_the_store_refuses_to_number_a_moved_store_and_names_the_command(
    config: StoreConfig, writer: PostgresEventStore
) -> None:
    _append(writer, "a", "before")
    move_to_a_younger_cluster(config)

    with pytest.raises(StoreMoved) as refused:
        PostgresEventStore(config)
    assert refused.value.command == f"tidings store rebase --schema {config.schema}"
    assert refused.value.command in str(refused.value)
    assert _moved(config.schema) == 1.0
    with pytest.raises(StoreMoved):
        writer.sequencer.catch_up(timeout=DEADLINE)

    assert rebase(config).rebased
    assert not rebase(config).rebased  # once is enough; a second finds nothing to do
    with PostgresEventStore(config) as store:
        assert store.sequencer.catch_up() == 1
    assert _moved(config.schema) == 0.0


def test_a_running_sequencer_reports_the_move_for_what_it_is(
    config: StoreConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """The endpoint switched under a running process (a managed blue/green switchover renames hosts)."""
    caplog.set_level(logging.INFO, logger="eventstore.sequencer")
    with PostgresEventStore(config, sequencer_poll_interval=0.02) as store:
        first = _append(store, "a", "before")
        _wait_numbered(store, 1)
        move_to_a_younger_cluster(config)
        stuck = _append(store, "a", "after the move")

        deadline = time.monotonic() + DEADLINE
        while not store.sequencer.status.moved:
            assert time.monotonic() < deadline, "the sequencer never reported the move"
            time.sleep(0.02)
        assert _moved(config.schema) == 1.0
        moved_logs = [r for r in caplog.records if "another cluster" in r.getMessage()]
        assert len(moved_logs) == 1
        assert getattr(moved_logs[0], "command", None) == f"tidings store rebase --schema {config.schema}"
        # No random transaction is blamed for it.
        assert not any(getattr(r, "blocking_pid", None) for r in caplog.records)
        assert [e.event_id for e in _all(store)] == [first.event_id]

        rebase(config)
        events = _wait_numbered(store, 2)
        assert [e.event_id for e in events] == [first.event_id, stuck.event_id]
        deadline = time.monotonic() + DEADLINE
        while store.sequencer.status.moved:
            assert time.monotonic() < deadline, "the sequencer still reports the move after the rebase"
            time.sleep(0.02)
    assert any("numbering resumed" in r.getMessage() for r in caplog.records)


def _moved(schema: str) -> float | None:
    return REGISTRY.get_sample_value("tidings_sequencer_moved", {"schema": schema})


WRITERS = 4


def test_writers_during_and_after_the_rebase_lose_nothing(
    config: StoreConfig, writer: PostgresEventStore
) -> None:
    numbered_before = [_append(writer, s, f"n{i}") for i, s in enumerate("abcab")]
    writer.sequencer.catch_up()
    waiting = [_append(writer, s, f"w{i}") for i, s in enumerate("dbacd")]
    old_order = [e for e in _keys(config) if e in {w.event_id for w in waiting}]
    move_to_a_younger_cluster(config)

    appended: list[tuple[float, uuid.UUID]] = []  # (when the append started, event id)
    failures: list[BaseException] = []
    lock = threading.Lock()
    rebased_at: list[float] = []
    stop = threading.Event()

    def write(seed: int) -> None:
        rng = random.Random(seed)
        after_rebase = 0
        try:
            while not stop.is_set() or after_rebase < 20:
                # Old streams (keys of the old cluster) and new ones; sometimes a large append (COPY).
                stream = rng.choice(["a", "b", "c", "d", f"new-{seed}-{rng.randrange(3)}"])
                events = [EventData("E", f"{seed}".encode()) for _ in range(rng.choice([1, 1, 2, COPY_AT]))]
                started = time.monotonic()
                writer.append_to_stream(stream, ANY, events)
                with lock:
                    appended.extend((started, e.event_id) for e in events)
                    if rebased_at and started > rebased_at[0]:
                        after_rebase += 1
        except BaseException as exc:  # noqa: BLE001 - the test inspects what a writer met
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(seed,)) for seed in range(WRITERS)]
    for thread in threads:
        thread.start()
    _wait_for(lambda: len(appended) >= 40, "writers appending to the moved store")
    report = rebase(config)
    with lock:
        rebased_at.append(time.monotonic())
    assert report.rebased
    assert report.numbered >= len(waiting)
    with PostgresEventStore(config, sequencer_poll_interval=0.02) as store:
        stop.set()
        for thread in threads:
            thread.join(timeout=DEADLINE)
        assert not failures, failures
        total = len(numbered_before) + len(waiting) + len(appended)
        events = _wait_numbered(store, total)
        streams = {s.stream_id for s in store.list_streams(limit=1000)}
        in_stream_order = {s: [e.event_number for e in store.stream_forward(s)] for s in streams}

    assert len(events) == total
    assert [e.event_number for e in events] == list(range(1, total + 1))
    ids = [e.event_id for e in events]
    assert set(ids) == {w.event_id for w in numbered_before + waiting} | {i for _, i in appended}
    assert ids[: len(numbered_before)] == [e.event_id for e in numbered_before]
    position = {event_id: n for n, event_id in enumerate(ids)}
    assert sorted(old_order, key=position.__getitem__) == old_order  # the waiting keep their order
    # Everything appended after the rebase comes after everything the rebase numbered.
    later = [position[i] for started, i in appended if started > rebased_at[0]]
    assert later
    assert min(later) >= report.last_event_number
    assert max(position[w.event_id] for w in waiting) < report.last_event_number
    for stream, numbers in in_stream_order.items():
        assert numbers == sorted(numbers), f"stream {stream} numbered out of its order"


def _lower_the_streams_keys(config: StoreConfig) -> None:
    """What step 1's streams' batches do (the events' batches having passed before the appends came)."""
    with psycopg.connect(config.url) as conn:
        low = "(pg_snapshot_xmin(pg_current_snapshot())::text::bigint - 1)::text::xid8"
        conn.execute(
            sql.SQL("UPDATE {} SET last_xid = " + low).format(sql.Identifier(config.schema, "streams"))
        )


def test_appends_made_while_the_keys_are_lowered_are_numbered_in_their_streams_order(
    config: StoreConfig, writer: PostgresEventStore
) -> None:
    numbered_before = [_append(writer, s, f"n{i}") for i, s in enumerate("abab")]
    assert writer.sequencer.catch_up() == len(numbered_before)
    waiting = [_append(writer, "b", "w0")]
    move_to_a_younger_cluster(config)
    # a's last event is numbered, so its appends inherit that event's old key, before the cursor; b's
    # inherit its waiting event's key, after the cursor; c is new (this cluster's id).
    inherited = [_append(writer, s, f"i{i}") for i, s in enumerate("aabc")]
    _lower_the_streams_keys(config)
    # Stamped with this cluster's ids, far below the keys the streams' earlier appends inherited.
    lowered = [_append(writer, s, f"l{i}") for i, s in enumerate("abca")]

    report = rebase(config)
    assert report.rebased
    assert report.numbered == len(waiting) + len(inherited) + len(lowered)
    with PostgresEventStore(config, sequencer_poll_interval=0.02) as store:
        after = [_append(store, s, f"r{i}") for i, s in enumerate("abcd")]
        total = len(numbered_before) + len(waiting) + len(inherited) + len(lowered) + len(after)
        events = _wait_numbered(store, total)
        in_stream_order = {s: [e.event_number for e in store.stream_forward(s)] for s in "abcd"}

    assert [e.event_number for e in events] == list(range(1, total + 1))
    assert [e.event_id for e in events[: len(numbered_before)]] == [e.event_id for e in numbered_before]
    assert [e.event_id for e in events[-len(after) :]] == [e.event_id for e in after]
    for stream, numbers in in_stream_order.items():
        assert numbers == sorted(numbers), f"stream {stream} numbered out of its order: {numbers}"


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _current_xid(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def younger_cluster() -> Iterator[LocalPostgres]:
    """A freshly initialised cluster of the same major version: its transaction ids start low."""
    cluster = LocalPostgres()
    cluster.start()
    yield cluster
    cluster.stop(keep_logs=False)


def test_a_real_dump_restored_into_a_younger_cluster_keeps_numbering(
    config: StoreConfig, writer: PostgresEventStore, younger_cluster: LocalPostgres
) -> None:
    # The old cluster must have handed out more ids than the new one will have by the restore; a
    # long-lived production cluster has, by far. The test's cluster may be young too: age it.
    target_next = _current_xid(younger_cluster.url) + 2000
    with psycopg.connect(config.url, autocommit=True) as conn:
        while _current_xid(config.url) < target_next:
            for _ in range(500):
                conn.execute("SELECT pg_current_xact_id()")
    numbered_before = [_append(writer, s, f"n{i}") for i, s in enumerate("abacb")]
    writer.sequencer.catch_up()
    waiting = [_append(writer, s, f"w{i}") for i, s in enumerate("bdaac")]
    old_order = [e for e in _keys(config) if e in {w.event_id for w in waiting}]

    dump = subprocess.run(
        [str(younger_cluster.bindir / "pg_dump"), "--format=custom", f"--schema={config.schema}", config.url],
        capture_output=True,
        check=True,
    )
    subprocess.run(
        [
            str(younger_cluster.bindir / "pg_restore"),
            "--no-owner",
            "--exit-on-error",
            "-d",
            younger_cluster.url,
        ],
        input=dump.stdout,
        capture_output=True,
        check=True,
    )
    moved_config = StoreConfig(younger_cluster.url, config.schema)
    with pytest.raises(StoreMoved):
        PostgresEventStore(moved_config)  # the restore did leave the store with the old cluster's ids

    migrate(moved_config)
    with PostgresEventStore(moved_config, sequencer_poll_interval=0.02) as store:
        after = [_append(store, s, f"new{i}") for i, s in enumerate(["a", "e", "d", "b", "e"])]
        events = _wait_numbered(store, len(numbered_before) + len(waiting) + len(after))

    assert [e.event_number for e in events] == list(range(1, len(events) + 1))
    ids = [e.event_id for e in events]
    assert ids[: len(numbered_before)] == [e.event_id for e in numbered_before]
    assert ids[len(numbered_before) : len(numbered_before) + len(waiting)] == old_order
    assert ids[len(numbered_before) + len(waiting) :] == [e.event_id for e in after]
