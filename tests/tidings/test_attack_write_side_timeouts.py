"""Attacks on issue 21 case 2: the timeout bounds the whole dispatch, and the caller's answer agrees
with what the store holds. Real PostgreSQL, no mocks."""

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

from eventstore import PostgresEventStore, StoreConfig, migrate
from examples.bank.accounts import BankAccount, Deposit, accounts
from examples.bank.events import MoneyDeposited
from tests.eventstore.relay_support import wait_until
from tests.tidings.test_dispatch import MAPPER, open_account
from tidings import Application, ExecutionTimeout, Router
from tidings.pytest_plugin import PostgresSchema


@dataclass(frozen=True)
class ManyDeposits:
    account_id: uuid.UUID
    n: int


@dataclass(frozen=True)
class SlowDeposit:
    account_id: uuid.UUID
    seconds: float


FINISHED = {"slow": 0, "started": 0}
_finished_lock = threading.Lock()


class Teller:
    def handle(self, account: BankAccount, command: Any) -> Any:
        now = datetime.now(UTC)
        if isinstance(command, SlowDeposit):
            with _finished_lock:
                FINISHED["started"] += 1
            time.sleep(command.seconds)
            with _finished_lock:
                FINISHED["slow"] += 1
            return MoneyDeposited(command.account_id, Decimal("1.00"), account.balance + 1, now)
        return [
            MoneyDeposited(command.account_id, Decimal("1.00"), account.balance + i + 1, now)
            for i in range(command.n)
        ]


def _app(store: PostgresEventStore, **options: Any) -> Application:
    extra = Router()
    extra.dispatch(
        [ManyDeposits, SlowDeposit],
        to=Teller(),
        aggregate=BankAccount,
        identity="account_id",
        identity_prefix="account-",
    )
    return Application(store, MAPPER, Router.compose(accounts, extra), **options)


def _count(store: PostgresEventStore, account: uuid.UUID) -> int:
    return len(store.read_stream_forward(f"account-{account}", count=100000))


def _lock_row(schema: PostgresSchema, account: uuid.UUID) -> psycopg.Connection:
    conn = psycopg.connect(schema.server_url)
    conn.execute(
        sql.SQL("SELECT 1 FROM {} WHERE stream_id = %s FOR UPDATE").format(
            sql.Identifier(schema.name, "streams")
        ),
        (f"account-{account}",),
    )
    return conn


# --- timeouts of 0 or negative --------------------------------------------------------------------


@pytest.mark.parametrize("threads", [0, 2])
@pytest.mark.parametrize("timeout", [0.0, -1.0, 1e-9])
def test_zero_and_negative_timeouts_append_nothing(
    event_store: PostgresEventStore, threads: int, timeout: float
) -> None:
    app = _app(event_store, command_threads=threads)
    account = open_account(app)
    with pytest.raises(ExecutionTimeout):
        app.dispatch(Deposit(account, Decimal("1.00")), timeout=timeout)
    assert _count(event_store, account) == 1


# --- the outcome reported against what the store holds, the lock released around the deadline ----


def _race_release_around_deadline(
    store: PostgresEventStore, schema: PostgresSchema, threads: int, n: int, rounds: int
) -> tuple[list[str], list[float], dict[str, int]]:
    """Hold the stream's row lock and release it from 10 ms before to 40 ms after the dispatch's
    deadline; compare each reported outcome with what the store holds."""
    app = _app(store, command_threads=threads)
    account = open_account(app)
    app.dispatch(Deposit(account, Decimal("1.00")))  # cached at version 2
    timeout = 0.15
    disagreements: list[str] = []
    late_commits: list[float] = []
    outcomes = {"ok": 0, "timeout": 0}
    for i in range(rounds):
        delta = -0.010 + (i % 26) * 0.002
        before = _count(store, account)
        holder = _lock_row(schema, account)
        released_at: list[float] = []

        def release(
            start: float,
            delta: float = delta,
            holder: psycopg.Connection = holder,
            released_at: list[float] = released_at,
        ) -> None:
            # Scheduled, not spun: a spinning thread would take a core from the watchdog it tests.
            time.sleep(max(0.0, start + timeout + delta - time.monotonic()))
            holder.commit()
            released_at.append(time.monotonic())

        start = time.monotonic()
        releaser = threading.Thread(target=release, args=(start,))
        releaser.start()
        try:
            app.dispatch(ManyDeposits(account, n), timeout=timeout)
            outcome = "ok"
        except ExecutionTimeout:
            outcome = "timeout"
        releaser.join()
        holder.close()
        outcomes[outcome] += 1
        appended = _count(store, account) - before
        if outcome == "ok" and appended != n:
            disagreements.append(f"i={i} success reported but {appended} appended")
        if outcome == "timeout" and appended != 0:
            disagreements.append(f"i={i} ExecutionTimeout but {appended} appended")
        if outcome == "ok" and released_at and released_at[0] > start + timeout:
            # The append could not commit before the lock was released: it committed past the deadline.
            late_commits.append(released_at[0] - (start + timeout))
    return disagreements, late_commits, outcomes


@pytest.mark.parametrize("threads", [0, 2])
@pytest.mark.parametrize("n", [1, 12])
def test_outcome_agrees_with_store_when_lock_released_around_deadline(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema, threads: int, n: int
) -> None:
    disagreements, _, outcomes = _race_release_around_deadline(event_store, postgres_schema, threads, n, 60)
    assert not disagreements, (disagreements, outcomes)


@pytest.mark.parametrize("threads", [0, 2])
def test_an_append_waiting_past_the_deadline_is_cancelled_within_the_cancels_travel_time(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema, threads: int
) -> None:
    """An append in flight at the deadline may still commit (the issue allows it: the caller is told),
    but only until its cancel lands: the watchdog sends it 10 ms ahead, so a lock released more than
    the cancel's travel time past the deadline must find the append gone."""
    _, late_commits, outcomes = _race_release_around_deadline(event_store, postgres_schema, threads, 1, 60)
    assert max(late_commits, default=0.0) < 0.05, (
        f"{len(late_commits)} of {outcomes['ok']} successful dispatches (timeout 0.15 s) committed their "
        f"append after the deadline, up to {max(late_commits) * 1000:.1f} ms past it; {outcomes}"
    )


# --- waits for a session bounded by the deadline (command_threads=0) -----------------------------


def test_a_read_waiting_for_a_session_is_bounded_by_the_dispatch_timeout(
    postgres_schema: PostgresSchema,
) -> None:
    """command_threads=0: 'the timeout bounds the waits (for the aggregate's lock, a session, another
    writer)'. The aggregate is not cached, so the dispatch reads the stream first; the only session is
    busy for 3 s."""
    config = StoreConfig(postgres_schema.server_url, postgres_schema.name, pool_size=1, statement_timeout=2.0)
    migrate(config)
    with PostgresEventStore(config) as store:
        writer = _app(store)
        account = open_account(writer)
        app = _app(store)  # a second replica: nothing cached
        held = threading.Event()
        done = threading.Event()

        def hold() -> None:
            with store.connection() as conn:
                conn.execute("SELECT 1")
                held.set()
                done.wait(3.0)

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait(5)
        started = time.monotonic()
        try:
            app.dispatch(Deposit(account, Decimal("1.00")), timeout=0.3)
            outcome: object = "success"
        except Exception as exc:  # noqa: BLE001
            outcome = exc
        took = time.monotonic() - started
        done.set()
        holder.join()
        problem = f"timeout=0.3 but the caller waited {took:.2f}s and got {type(outcome).__name__}: {outcome}"
        assert isinstance(outcome, ExecutionTimeout), problem
        assert took < 0.8, problem


def test_with_command_threads_a_read_waiting_for_a_session_leaves_on_time(
    postgres_schema: PostgresSchema,
) -> None:
    config = StoreConfig(postgres_schema.server_url, postgres_schema.name, pool_size=1, statement_timeout=2.0)
    migrate(config)
    with PostgresEventStore(config) as store:
        writer = _app(store)
        account = open_account(writer)
        app = _app(store, command_threads=2)
        held = threading.Event()
        done = threading.Event()

        def hold() -> None:
            with store.connection() as conn:
                conn.execute("SELECT 1")
                held.set()
                done.wait(3.0)

        holder = threading.Thread(target=hold)
        holder.start()
        held.wait(5)
        started = time.monotonic()
        with pytest.raises(ExecutionTimeout):
            app.dispatch(Deposit(account, Decimal("1.00")), timeout=0.3)
        took = time.monotonic() - started
        done.set()
        holder.join()
        assert took < 0.8
        assert _count(store, account) == 1


# --- a joined dispatch waiting on another writer's row lock --------------------------------------


def test_a_joined_dispatch_waiting_on_a_row_lock_is_bounded_by_its_timeout(
    postgres_schema: PostgresSchema,
) -> None:
    config = StoreConfig(postgres_schema.server_url, postgres_schema.name, statement_timeout=3.0)
    migrate(config)
    with PostgresEventStore(config) as store:
        app = _app(store)
        account = open_account(app)
        holder = _lock_row(postgres_schema, account)
        started = time.monotonic()
        try:
            app.transaction(
                lambda conn: app.dispatch(Deposit(account, Decimal("1.00")), connection=conn, timeout=0.3),
                attempts=0,
            )
            outcome: object = "success"
        except Exception as exc:  # noqa: BLE001
            outcome = exc
        took = time.monotonic() - started
        holder.rollback()
        holder.close()
        problem = (
            f"joined dispatch, timeout=0.3: waited {took:.2f}s and got {type(outcome).__name__}: {outcome}"
        )
        assert isinstance(outcome, ExecutionTimeout), problem
        assert took < 0.8, problem


# --- more callers than command threads -----------------------------------------------------------


def test_more_callers_than_threads_all_return_on_time_and_agree_with_the_store(
    event_store: PostgresEventStore,
) -> None:
    app = _app(event_store, command_threads=2)
    accounts_ = [open_account(app) for _ in range(8)]
    FINISHED["slow"] = FINISHED["started"] = 0
    results: dict[int, tuple[str, float]] = {}

    def call(i: int) -> None:
        started = time.monotonic()
        try:
            app.dispatch(SlowDeposit(accounts_[i], 0.25), timeout=0.4)
            results[i] = ("ok", time.monotonic() - started)
        except ExecutionTimeout:
            results[i] = ("timeout", time.monotonic() - started)

    callers = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for c in callers:
        c.start()
    for c in callers:
        c.join()
    assert max(took for _, took in results.values()) < 0.4 + 0.3, results
    # abandoned commands finish in the background: give them time, then compare with the store.
    # Every job is dequeued within about 1 s (2 threads, 0.25 s each); then what started has finished.
    settled = time.monotonic() + 2.0
    while time.monotonic() < settled:
        time.sleep(0.05)
    wait_until(lambda: FINISHED["slow"] == FINISHED["started"], 10, "every started command finishing")
    for i, (outcome, _) in results.items():
        assert _count(event_store, accounts_[i]) == (2 if outcome == "ok" else 1), (i, outcome)
