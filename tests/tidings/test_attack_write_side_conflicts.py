"""Attacks on issue 21 cases 1 and 4 in joined dispatches (Application.transaction), and on the deadline
watchdog's cancels reaching another caller's statement. Real PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from eventstore import PostgresEventStore, StoreConfig, TransactionConflict, migrate
from eventstore.records import ANY
from examples.bank.accounts import BankAccount, Deposit, InsufficientFunds, Withdraw, accounts
from tests.tidings.test_dispatch import MAPPER, open_account
from tests.tidings.test_dispatch_truth import TopUp, _app
from tidings import Application, ExecutionTimeout
from tidings.aggregate import apply_all
from tidings.pytest_plugin import PostgresSchema


def _balance(store: PostgresEventStore, account: uuid.UUID) -> Decimal:
    recorded = store.read_stream_forward(f"account-{account}", count=10000)
    return apply_all(BankAccount(), [MAPPER.event_of(e) for e in recorded]).balance


# --- case 1 in joined dispatches -----------------------------------------------------------------


def test_joined_refusal_on_a_stale_cache_is_decided_again(event_store: PostgresEventStore) -> None:
    first, second = _app(event_store), _app(event_store)
    account = open_account(first)
    second.dispatch(Deposit(account, Decimal("10.00")))  # second caches 10
    first.dispatch(Deposit(account, Decimal("100.00")))  # the store says 110
    state = second.transaction(
        lambda conn: second.dispatch(
            Withdraw(account, Decimal("50.00")), connection=conn, returning="aggregate_state"
        )
    )
    assert state.balance == Decimal("60.00")
    with pytest.raises(InsufficientFunds):
        second.transaction(lambda conn: second.dispatch(Withdraw(account, Decimal("61.00")), connection=conn))


def test_joined_no_op_answers_with_the_latest_version(event_store: PostgresEventStore) -> None:
    first, second = _app(event_store), _app(event_store)
    account = open_account(first)
    second.dispatch(TopUp(account, Decimal("10.00")))  # second caches 10 at version 2
    first.dispatch(Deposit(account, Decimal("5.00")))  # the store: 15 at version 3
    version = second.transaction(
        lambda conn: second.dispatch(
            TopUp(account, Decimal("1.00")), connection=conn, returning="aggregate_version"
        )
    )
    assert version == 3


def test_no_op_on_a_stale_cache_in_a_transaction_that_itself_appended(
    event_store: PostgresEventStore,
) -> None:
    """The cache is behind; the transaction appended to the stream itself, then a no-op is decided."""
    first, second = _app(event_store), _app(event_store)
    account = open_account(first)
    second.dispatch(TopUp(account, Decimal("10.00")))  # second caches 10
    first.dispatch(Withdraw(account, Decimal("10.00")))  # the store: 0

    def work(conn: psycopg.Connection[Any]) -> Any:
        second.dispatch(Deposit(account, Decimal("3.00")), connection=conn)
        return second.dispatch(TopUp(account, Decimal("3.00")), connection=conn, returning="aggregate_state")

    state = second.transaction(work)
    assert state.balance == Decimal("3.00")
    assert _balance(event_store, account) == Decimal("3.00")


# --- case 4: deadlocks in Application.transaction ------------------------------------------------


def test_opposite_order_transactions_deadlock_and_are_rerun(event_store: PostgresEventStore) -> None:
    app = Application(event_store, MAPPER, accounts)
    x, y = open_account(app), open_account(app)
    runs = {"xy": 0, "yx": 0}
    conflicts: list[str] = []
    failures: list[BaseException] = []

    def make(first: uuid.UUID, second: uuid.UUID, name: str, gate: threading.Barrier) -> Any:
        def work(conn: psycopg.Connection[Any]) -> None:
            runs[name] += 1  # not idempotent: counts the runs
            app.dispatch(Deposit(first, Decimal("1.00")), connection=conn)
            if runs[name] == 1:
                gate.wait(5)
            try:
                app.dispatch(Deposit(second, Decimal("1.00")), connection=conn)
            except TransactionConflict as exc:
                conflicts.append(str(exc))
                raise

        return work

    for _ in range(3):
        runs["xy"] = runs["yx"] = 0
        gate = threading.Barrier(2)

        def go(first: uuid.UUID, second: uuid.UUID, name: str, gate: threading.Barrier = gate) -> None:
            try:
                app.transaction(make(first, second, name, gate))
            except BaseException as exc:  # noqa: BLE001
                failures.append(exc)

        ts = [threading.Thread(target=go, args=(x, y, "xy")), threading.Thread(target=go, args=(y, x, "yx"))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert not failures, failures
        assert runs["xy"] + runs["yx"] == 3, runs
    assert len(conflicts) == 3
    assert _balance(event_store, x) == Decimal("6.00")
    assert _balance(event_store, y) == Decimal("6.00")


def test_deadlock_on_the_applications_own_sql_in_a_transaction_is_rerun(
    event_store: PostgresEventStore,
) -> None:
    """A process manager's own statement (its state row) loses the deadlock, not an append."""
    app = Application(event_store, MAPPER, accounts)
    table = sql.Identifier(event_store.config.schema, "pm_state")  # the test's own schema
    with event_store.connection() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, n int)").format(table))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 0), (2, 0)").format(table))
    runs = [0]
    failures: list[BaseException] = []
    gate = threading.Barrier(2)

    def make(a: int, b: int) -> Any:
        def work(conn: psycopg.Connection[Any]) -> None:
            runs[0] += 1
            conn.execute(sql.SQL("UPDATE {} SET n = n + 1 WHERE id = %s").format(table), (a,))
            if runs[0] <= 2:
                gate.wait(5)
            conn.execute(sql.SQL("UPDATE {} SET n = n + 1 WHERE id = %s").format(table), (b,))

        return work

    def go(a: int, b: int) -> None:
        try:
            app.transaction(make(a, b))
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    ts = [threading.Thread(target=go, args=(1, 2)), threading.Thread(target=go, args=(2, 1))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not failures, failures
    with event_store.connection() as conn:
        assert conn.execute(sql.SQL("SELECT sum(n) FROM {}").format(table)).fetchone()[0] == 4


# --- the watchdog's late cancels never reach another caller's statement --------------------------


def test_late_cancels_never_hit_another_callers_statement(postgres_schema: PostgresSchema) -> None:
    config = StoreConfig(postgres_schema.server_url, postgres_schema.name, pool_size=2)
    migrate(config)
    with PostgresEventStore(config) as store:
        app = Application(store, MAPPER, accounts)
        account = open_account(app)
        other = f"bystander-{uuid.uuid4()}"
        stop = threading.Event()
        bystander_errors: list[str] = []
        bystander_ops = [0]

        def bystander() -> None:
            from eventstore.records import EventData

            while not stop.is_set():
                try:
                    store.append_to_stream(
                        other,
                        ANY,
                        [EventData("x", b"{}")],
                    )
                    store.read_stream_forward(other, count=5)
                    bystander_ops[0] += 1
                except Exception as exc:  # noqa: BLE001
                    bystander_errors.append(f"{type(exc).__name__}: {exc}")

        b = threading.Thread(target=bystander)
        b.start()
        outcomes = {"ok": 0, "timeout": 0}
        try:
            for i in range(80):
                holder = psycopg.connect(postgres_schema.server_url)
                holder.execute(
                    sql.SQL("SELECT 1 FROM {} WHERE stream_id = %s FOR UPDATE").format(
                        sql.Identifier(postgres_schema.name, "streams")
                    ),
                    (f"account-{account}",),
                )
                timeout = 0.06
                delta = -0.005 + (i % 16) * 0.0025
                start = time.monotonic()

                def release(holder: psycopg.Connection = holder, at: float = start + timeout + delta) -> None:
                    while time.monotonic() < at:
                        pass
                    holder.commit()

                r = threading.Thread(target=release)
                r.start()
                try:
                    app.dispatch(Deposit(account, Decimal("1.00")), timeout=timeout)
                    outcomes["ok"] += 1
                except ExecutionTimeout:
                    outcomes["timeout"] += 1
                r.join()
                holder.close()
        finally:
            stop.set()
            b.join()
        print(outcomes, "bystander ops", bystander_ops[0])
        assert not bystander_errors, bystander_errors[:5]
        assert _balance(store, account) == Decimal(outcomes["ok"])
