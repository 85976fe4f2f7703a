"""The store's session pool on a real PostgreSQL: bounds, hand-over, broken sessions, ageing."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from eventstore import NO_STREAM, EventData, PoolExhausted, PostgresEventStore, StoreUnavailable
from eventstore.postgres.pool import SessionPool
from tidings.pytest_plugin import PostgresSchema


def _backend_pid(pool: SessionPool) -> int:
    with pool.connection() as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def _terminate(url: str, pid: int) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_sessions_are_reused_last_in_first_out(postgres_schema: PostgresSchema) -> None:
    pool = SessionPool(postgres_schema.url, max_size=3)
    try:
        first, second = pool.acquire(), pool.acquire()
        assert first.conn is not second.conn
        pool.release(first)
        pool.release(second)
        # The session returned last is lent first, so a quiet store keeps using the same one.
        assert pool.acquire() is second
    finally:
        pool.close()


def test_a_full_pool_hands_a_returned_session_to_a_waiting_caller(postgres_schema: PostgresSchema) -> None:
    pool = SessionPool(postgres_schema.url, max_size=1, timeout=10)
    try:
        held = pool.acquire()
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(pool.acquire()))
        waiter.start()
        deadline = time.monotonic() + 5
        while pool._waiters == 0:  # the waiter is parked on the pool's condition
            assert time.monotonic() < deadline, "the second caller never waited"
            time.sleep(0.005)
        pool.release(held)
        waiter.join(timeout=5)
        assert got == [held]
    finally:
        pool.close()


def test_a_pool_that_stays_full_raises_a_typed_error_that_says_what_to_do(
    postgres_schema: PostgresSchema,
) -> None:
    pool = SessionPool(postgres_schema.url, max_size=1, timeout=0.2)
    try:
        held = pool.acquire()
        started = time.monotonic()
        with pytest.raises(PoolExhausted, match="pool_size") as caught:
            pool.acquire()
        assert time.monotonic() - started >= 0.2
        assert isinstance(caught.value, StoreUnavailable)
        pool.release(held)
        pool.release(pool.acquire())  # usable again once a session is back
    finally:
        pool.close()


def test_a_session_left_in_a_transaction_is_rolled_back_before_reuse(postgres_schema: PostgresSchema) -> None:
    pool = SessionPool(postgres_schema.url, max_size=1)
    try:
        session = pool.acquire()
        session.conn.execute("BEGIN")
        session.conn.execute("CREATE TABLE left_behind (x int)")
        pool.release(session)
        with pool.connection() as conn:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert conn.execute("SELECT to_regclass('left_behind')").fetchone() == (None,)
    finally:
        pool.close()


def test_a_session_killed_by_the_server_is_replaced(postgres_schema: PostgresSchema) -> None:
    pool = SessionPool(postgres_schema.url, max_size=1, timeout=2)
    try:
        victim = _backend_pid(pool)
        _terminate(postgres_schema.url, victim)
        with pytest.raises(psycopg.OperationalError), pool.connection() as conn:
            conn.execute("SELECT 1")
        # The broken session was closed on return, which freed its place for a new one.
        assert _backend_pid(pool) != victim
    finally:
        pool.close()


def test_sessions_idle_for_longer_than_max_idle_are_closed(postgres_schema: PostgresSchema) -> None:
    # With max_idle 0, the oldest idle session is always past its time when another is lent.
    pool = SessionPool(postgres_schema.url, max_size=3, max_idle=0)
    try:
        old, recent = pool.acquire(), pool.acquire()
        pool.release(old)
        pool.release(recent)
        assert pool.acquire() is recent
        assert old.conn.closed
        assert pool._size == 1
    finally:
        pool.close()


def test_a_closed_pool_refuses_to_lend(postgres_schema: PostgresSchema) -> None:
    pool = SessionPool(postgres_schema.url, max_size=2)
    lent = pool.acquire()
    pool.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        pool.acquire()
    pool.release(lent)
    assert lent.conn.closed


def test_the_store_recovers_from_a_killed_session(event_store: PostgresEventStore) -> None:
    event_store.append_to_stream("s-1", NO_STREAM, [EventData("Opened", b"{}")])
    with event_store.connection() as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    _terminate(event_store.config.url, int(row[0]))
    # The append that meets the dead session (unless the sequencer met it first) fails with the
    # store's error and writes nothing; the next one runs on a new session.
    outcomes = []
    for _ in range(2):
        try:
            event_store.append_to_stream("s-1", 1, [EventData("Deposited", b"{}")])
        except StoreUnavailable:
            outcomes.append("unavailable")
        else:
            outcomes.append("appended")
            break
    assert outcomes in (["appended"], ["unavailable", "appended"])
    assert [e.stream_version for e in event_store.read_stream_forward("s-1")] == [1, 2]
