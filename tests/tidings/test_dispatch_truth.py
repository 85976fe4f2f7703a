"""The write side decides on the truth (issue 21): a cached state is re-checked before a refusal or a
no-op is believed, a dispatch's timeout bounds all of it, commands to one aggregate wait for each other
instead of racing, and a deadlock is a conflict, not an outage. All on the real PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from eventstore import PostgresEventStore, TransactionConflict
from examples.bank.accounts import (
    BankAccount,
    Deposit,
    InsufficientFunds,
    Withdraw,
    accounts,
)
from examples.bank.events import MoneyDeposited
from tests.eventstore.relay_support import wait_until
from tests.tidings.test_dispatch import MAPPER, open_account
from tidings import Application, ExecutionTimeout, Router
from tidings.pytest_plugin import PostgresSchema


@dataclass(frozen=True)
class TopUp:
    """Deposit what is missing for the balance to reach ``to``; nothing when it already has."""

    account_id: uuid.UUID
    to: Decimal


@dataclass(frozen=True)
class SlowDeposit:
    account_id: uuid.UUID
    amount: Decimal
    seconds: float


class Teller:
    """Command handlers over BankAccount: a top-up that may decide nothing, and a slow deposit."""

    def __init__(self) -> None:
        self.finished = threading.Event()

    def handle(self, account: BankAccount, command: Any) -> Any:
        now = datetime.now(UTC)
        if isinstance(command, SlowDeposit):
            time.sleep(command.seconds)
            self.finished.set()
            return MoneyDeposited(command.account_id, command.amount, account.balance + command.amount, now)
        missing = command.to - account.balance
        if missing <= 0:
            return []
        return MoneyDeposited(command.account_id, missing, command.to, now)


def _app(store: PostgresEventStore, teller: Teller | None = None, **options: Any) -> Application:
    extra = Router()
    extra.dispatch(
        [TopUp, SlowDeposit],
        to=teller or Teller(),
        aggregate=BankAccount,
        identity="account_id",
        identity_prefix="account-",
    )
    return Application(store, MAPPER, Router.compose(accounts, extra), **options)


def _events(store: PostgresEventStore, account: uuid.UUID) -> list[str]:
    return [e.event_type for e in store.read_stream_forward(f"account-{account}", count=5000)]


# --- 1. decisions on the latest state -----------------------------------------------------------


def test_a_refusal_decided_on_a_stale_cache_is_decided_again_on_the_store(
    event_store: PostgresEventStore,
) -> None:
    first, second = _app(event_store), _app(event_store)
    account = open_account(first)
    second.dispatch(Deposit(account, Decimal("10.00")))  # second caches the balance 10
    first.dispatch(Deposit(account, Decimal("100.00")))  # the store says 110; second still says 10

    state = second.dispatch(Withdraw(account, Decimal("50.00")), returning="aggregate_state")

    assert state.balance == Decimal("60.00")
    assert _events(event_store, account)[-1] == "bank.MoneyWithdrawn"
    # A refusal that holds on the latest state is still a refusal, and appends nothing.
    with pytest.raises(InsufficientFunds):
        first.dispatch(Withdraw(account, Decimal("61.00")))
    assert len(_events(event_store, account)) == 4


def test_a_command_that_decides_nothing_is_decided_on_the_latest_state(
    event_store: PostgresEventStore,
) -> None:
    first, second = _app(event_store), _app(event_store)
    account = open_account(first)
    second.dispatch(TopUp(account, Decimal("10.00")))  # second caches the balance 10
    first.dispatch(Withdraw(account, Decimal("10.00")))  # the store says 0

    state = second.dispatch(TopUp(account, Decimal("10.00")), returning="aggregate_state")
    assert state.balance == Decimal("10.00"), "the top-up saw the withdrawal and deposited again"
    assert _events(event_store, account).count("bank.MoneyDeposited") == 2

    first.dispatch(Deposit(account, Decimal("5.00")))  # the store says 15; second's cache says 10
    state = second.dispatch(TopUp(account, Decimal("10.00")), returning="aggregate_state")
    assert state.balance == Decimal("15.00"), "a no-op answers with the latest state, not the cached one"
    version = second.dispatch(TopUp(account, Decimal("1.00")), returning="aggregate_version")
    assert version == len(_events(event_store, account))


# --- 2. the timeout bounds the whole dispatch ----------------------------------------------------


def test_with_command_threads_a_slow_aggregate_times_out_on_time_and_appends_nothing(
    event_store: PostgresEventStore,
) -> None:
    teller = Teller()
    app = _app(event_store, teller, command_threads=4)
    account = open_account(app)

    started = time.monotonic()
    with pytest.raises(ExecutionTimeout, match="nothing was appended"):
        app.dispatch(SlowDeposit(account, Decimal("1.00"), seconds=1.5), timeout=0.3)
    took = time.monotonic() - started
    assert took < 0.8, f"the caller waited {took:.2f}s for a 0.3s timeout"

    # The abandoned command finishes deciding in the background, and must not append then.
    wait_until(teller.finished.is_set, 10, "the slow command finishing")
    app.dispatch(Deposit(account, Decimal("2.00")))  # queued behind the abandoned one on this stream
    assert _events(event_store, account) == ["bank.AccountOpened", "bank.MoneyDeposited"]
    assert app.dispatch(Deposit(account, Decimal("1.00")), returning="aggregate_state").balance == Decimal(
        "3.00"
    )


def _hold_stream_row(schema: PostgresSchema, account: uuid.UUID) -> psycopg.Connection[Any]:
    """A transaction that holds the stream's row lock, so that an append to it waits."""
    holder = psycopg.connect(schema.url)
    holder.execute(
        sql.SQL("SELECT 1 FROM {} WHERE stream_id = %s FOR UPDATE").format(
            sql.Identifier(schema.name, "streams")
        ),
        (f"account-{account}",),
    )
    return holder


def test_an_append_still_waiting_at_the_deadline_is_cancelled_and_nothing_is_appended(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema
) -> None:
    app = _app(event_store)
    account = open_account(app)
    holder = _hold_stream_row(postgres_schema, account)
    try:
        started = time.monotonic()
        with pytest.raises(ExecutionTimeout, match="nothing was appended"):
            app.dispatch(Deposit(account, Decimal("1.00")), timeout=0.5)
        took = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert took < 1.2, f"the caller waited {took:.2f}s for a 0.5s timeout"
    assert _events(event_store, account) == ["bank.AccountOpened"]
    # The stream is usable at once, and the cached state did not take the cancelled deposit.
    state = app.dispatch(Deposit(account, Decimal("1.00")), returning="aggregate_state")
    assert state.balance == Decimal("1.00")


def test_an_append_that_waits_but_commits_before_the_deadline_is_reported_as_done(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema
) -> None:
    app = _app(event_store)
    account = open_account(app)
    holder = _hold_stream_row(postgres_schema, account)
    release = threading.Timer(0.3, holder.rollback)
    release.start()
    try:
        state = app.dispatch(Deposit(account, Decimal("1.00")), timeout=3.0, returning="aggregate_state")
    finally:
        release.join()
        holder.close()
    assert state.balance == Decimal("1.00")
    assert _events(event_store, account) == ["bank.AccountOpened", "bank.MoneyDeposited"]


def test_on_the_callers_thread_a_slow_aggregate_times_out_when_it_returns_and_appends_nothing(
    event_store: PostgresEventStore,
) -> None:
    teller = Teller()
    app = _app(event_store, teller)  # command_threads=0, the default
    account = open_account(app)
    started = time.monotonic()
    with pytest.raises(ExecutionTimeout, match="nothing was appended"):
        app.dispatch(SlowDeposit(account, Decimal("1.00"), seconds=0.6), timeout=0.2)
    assert time.monotonic() - started >= 0.6, "the caller ran the slow execute itself"
    assert _events(event_store, account) == ["bank.AccountOpened"]
    state = app.dispatch(Deposit(account, Decimal("2.00")), returning="aggregate_state")
    assert state.balance == Decimal("2.00"), "the cache did not keep the timed-out decision"


# --- 3. contention waits instead of failing -------------------------------------------------------


def test_sixteen_threads_on_one_aggregate_all_succeed_with_the_defaults(
    event_store: PostgresEventStore,
) -> None:
    app = Application(event_store, MAPPER, accounts)
    account = open_account(app)
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def deposit_25() -> None:
        start.wait()
        for _ in range(25):
            try:
                app.dispatch(Deposit(account, Decimal("1.00")))
            except BaseException as exc:  # noqa: BLE001 - every failure is counted and shown
                errors.append(exc)

    threads = [threading.Thread(target=deposit_25) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(_events(event_store, account)) == 401
    fresh = Application(event_store, MAPPER, accounts)
    assert fresh.dispatch(Deposit(account, Decimal("1.00")), returning="aggregate_state").balance == Decimal(
        "401.00"
    )


# --- 4. a deadlock is a conflict -------------------------------------------------------------------


def _deadlock(store: PostgresEventStore, app: Application, a: uuid.UUID, b: uuid.UUID) -> list[Any]:
    """Two transactions that each deposit into one account, then into the other: one must lose."""
    both_in = threading.Barrier(2)
    outcomes: list[Any] = []

    def transfer(first: uuid.UUID, second: uuid.UUID) -> None:
        try:
            with store.connection() as conn:
                app.dispatch(Deposit(first, Decimal("1.00")), connection=conn)
                both_in.wait(timeout=10)
                app.dispatch(Deposit(second, Decimal("1.00")), connection=conn)
            outcomes.append("committed")
        except Exception as exc:  # noqa: BLE001 - the test looks at what each one got
            outcomes.append(exc)

    threads = [threading.Thread(target=transfer, args=pair) for pair in ((a, b), (b, a))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def test_a_deadlock_between_joined_transactions_is_a_conflict_not_an_outage(
    event_store: PostgresEventStore,
) -> None:
    app = Application(event_store, MAPPER, accounts)
    a, b = open_account(app), open_account(app)

    outcomes = _deadlock(event_store, app, a, b)

    assert outcomes.count("committed") == 1, outcomes
    (lost,) = [o for o in outcomes if o != "committed"]
    assert isinstance(lost, TransactionConflict), repr(lost)
    assert "deadlock" in str(lost)
    assert "again" in str(lost)
    assert len(_events(event_store, a)) + len(_events(event_store, b)) == 4, "the loser wrote nothing"


def test_a_transaction_run_by_the_application_is_run_again_after_a_deadlock(
    event_store: PostgresEventStore,
) -> None:
    app = Application(event_store, MAPPER, accounts)
    a, b = open_account(app), open_account(app)
    both_in = threading.Barrier(2)
    runs: list[str] = []
    errors: list[BaseException] = []

    def transfer(first: uuid.UUID, second: uuid.UUID, name: str) -> None:
        def work(conn: psycopg.Connection[Any]) -> None:
            runs.append(name)
            app.dispatch(Deposit(first, Decimal("1.00")), connection=conn)
            if runs.count(name) == 1:
                both_in.wait(timeout=10)  # only the first run of each meets the other half-way
            app.dispatch(Deposit(second, Decimal("1.00")), connection=conn)

        try:
            app.transaction(work)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=transfer, args=(x, y, n)) for x, y, n in ((a, b, "ab"), (b, a, "ba"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert len(runs) == 3, f"one of the two ran again after losing the deadlock: {runs}"
    fresh = Application(event_store, MAPPER, accounts)
    for account in (a, b):
        assert fresh.dispatch(Deposit(account, Decimal("1.00")), returning="aggregate_state").balance == (
            Decimal("3.00")
        )
