"""Attacks on issue 21 case 3 (and its locked retry): commands to one aggregate wait for each other,
and a command that lost the optimistic race runs again holding the stream's row lock. Real PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from eventstore import PostgresEventStore, StoreConfig, migrate
from examples.bank.accounts import AccountAlreadyOpen, BankAccount, Deposit, OpenAccount, accounts
from examples.bank.events import MoneyDeposited
from tests.tidings.test_dispatch import MAPPER, open_account
from tidings import Application, ExecutionTimeout, ReentrantDispatch, Router
from tidings.aggregate import apply_all
from tidings.pytest_plugin import PostgresSchema
from tidings.snapshotting import Snapshotting

ROOT = Path(__file__).resolve().parents[2]


# --- the locked retry needs a second session when the aggregate is snapshotted ------------------


def test_locked_retry_with_snapshotting_does_not_wait_for_a_second_session(
    postgres_schema: PostgresSchema,
) -> None:
    """Replica A is behind; its deposit loses the optimistic race and runs again locked. With
    snapshotting the locked retry reads the snapshot through the pool while holding the pool's only
    session (dispatch.py _execute_locked -> _load -> Snapshotting.load(self.store, ...))."""
    config = StoreConfig(postgres_schema.server_url, postgres_schema.name, pool_size=1, statement_timeout=3.0)
    migrate(config)
    snap = {BankAccount: Snapshotting(every=100)}
    with PostgresEventStore(config) as store:
        a = Application(store, MAPPER, accounts, snapshotting=snap)
        b = Application(store, MAPPER, accounts, snapshotting=snap)
        account = open_account(a)  # a caches version 1
        b.dispatch(Deposit(account, Decimal("1.00")))  # the store is at 2
        started = time.monotonic()
        try:
            a.dispatch(Deposit(account, Decimal("1.00")), timeout=1.0)
            outcome: object = "success"
        except Exception as exc:  # noqa: BLE001
            outcome = exc
        took = time.monotonic() - started
        problem = f"replica's deposit (timeout=1.0, pool_size=1, snapshotting) took {took:.2f}s: {outcome!r}"
        assert outcome == "success", problem
        assert took < 1.0, problem


def test_locked_retry_without_snapshotting_with_one_session(postgres_schema: PostgresSchema) -> None:
    config = StoreConfig(postgres_schema.server_url, postgres_schema.name, pool_size=1, statement_timeout=3.0)
    migrate(config)
    with PostgresEventStore(config) as store:
        a = Application(store, MAPPER, accounts)
        b = Application(store, MAPPER, accounts)
        account = open_account(a)
        b.dispatch(Deposit(account, Decimal("1.00")))
        started = time.monotonic()
        result = a.dispatch(Deposit(account, Decimal("1.00")), timeout=1.0, returning="execution_result")
        assert time.monotonic() - started < 1.0
        assert result.aggregate_version == 3
        assert result.attempts == 2


# --- nested dispatch from inside execute ---------------------------------------------------------


@dataclass(frozen=True)
class DepositAndNudge:
    account_id: uuid.UUID
    other: uuid.UUID


class Nudger:
    app: Application | None = None

    def handle(self, account: BankAccount, command: DepositAndNudge) -> Any:
        assert self.app is not None
        self.app.dispatch(Deposit(command.other, Decimal("1.00")), timeout=1.0)
        return MoneyDeposited(command.account_id, Decimal("5.00"), account.balance + 5, datetime.now(UTC))


def _nudging_app(store: PostgresEventStore, **options: Any) -> Application:
    nudger = Nudger()
    extra = Router()
    extra.dispatch(
        DepositAndNudge, to=nudger, aggregate=BankAccount, identity="account_id", identity_prefix="account-"
    )
    app = Application(store, MAPPER, Router.compose(accounts, extra), **options)
    nudger.app = app
    return app


def _balance(store: PostgresEventStore, account: uuid.UUID) -> Decimal:
    recorded = store.read_stream_forward(f"account-{account}", count=10000)
    return apply_all(BankAccount(), [MAPPER.event_of(e) for e in recorded]).balance


@pytest.mark.parametrize("threads", [0, 2])
def test_nested_dispatch_to_another_stream(event_store: PostgresEventStore, threads: int) -> None:
    app = _nudging_app(event_store, command_threads=threads)
    one, two = open_account(app), open_account(app)
    app.dispatch(DepositAndNudge(one, two), timeout=3.0)
    assert _balance(event_store, one) == Decimal("5.00")
    assert _balance(event_store, two) == Decimal("1.00")


@pytest.mark.parametrize("threads", [0, 2])
def test_nested_dispatch_to_the_same_stream(event_store: PostgresEventStore, threads: int) -> None:
    """The outer command's execute dispatches to its own aggregate (an impure execute). It used to
    lose its append to the nested one, retry holding the row lock, and wait on that lock from its own
    nested dispatch until the deadline. It is refused at once, with a typed error, and appends nothing."""
    app = _nudging_app(event_store, command_threads=threads)
    one = open_account(app)
    started = time.monotonic()
    with pytest.raises(ReentrantDispatch, match="from inside a command"):
        app.dispatch(DepositAndNudge(one, one), timeout=3.0)
    assert time.monotonic() - started < 1.0
    assert _balance(event_store, one) == Decimal("0.00")
    assert len(event_store.read_stream_forward(f"account-{one}", count=100)) == 1


# --- a new stream created by two replicas at once ------------------------------------------------


def test_two_replicas_open_the_same_new_account_at_once(event_store: PostgresEventStore) -> None:
    a = Application(event_store, MAPPER, accounts)
    b = Application(event_store, MAPPER, accounts)
    tally: dict[str, int] = {}
    lock = threading.Lock()
    for _ in range(40):
        account = uuid.uuid4()
        gate = threading.Barrier(2)

        def open_(app: Application, account: uuid.UUID = account, gate: threading.Barrier = gate) -> None:
            gate.wait()
            try:
                app.dispatch(OpenAccount(account, "Ada"))
                outcome = "ok"
            except AccountAlreadyOpen:
                outcome = "already"
            except Exception as exc:  # noqa: BLE001
                outcome = f"{type(exc).__name__}: {exc}"
            with lock:
                tally[outcome] = tally.get(outcome, 0) + 1

        ts = [threading.Thread(target=open_, args=(app,)) for app in (a, b)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert len(event_store.read_stream_forward(f"account-{account}", count=10)) == 1
    assert set(tally) <= {"ok", "already"}, tally
    assert tally["ok"] == 40, tally


# --- kill -9 of a process holding the stream's row lock ------------------------------------------

_HOLDER = """
import sys, time
from eventstore import PostgresEventStore, StoreConfig
with PostgresEventStore(StoreConfig(sys.argv[1], sys.argv[2])) as store:
    with store.connection() as conn:
        store.lock_stream(sys.argv[3], conn, time.monotonic() + 5)
        print("locked", flush=True)
        time.sleep(120)
"""


def test_kill_9_of_the_lock_holder_frees_the_stream(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema
) -> None:
    app = Application(event_store, MAPPER, accounts)
    account = open_account(app)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _HOLDER,
            postgres_schema.server_url,
            postgres_schema.name,
            f"account-{account}",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ExecutionTimeout):
        app.dispatch(Deposit(account, Decimal("1.00")), timeout=0.5)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    started = time.monotonic()
    state = app.dispatch(Deposit(account, Decimal("1.00")), timeout=3.0, returning="aggregate_state")
    assert state.balance == Decimal("1.00")
    assert time.monotonic() - started < 3.0


# --- 4 processes x 4 threads on one aggregate, default settings ----------------------------------


def test_four_processes_of_four_threads_on_one_aggregate(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    app = Application(event_store, MAPPER, accounts)
    account = open_account(app)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    each, threads, processes_n = 20, 4, 4
    command = [
        sys.executable, "-m", "tests.tidings.dispatcher_process", postgres_schema.server_url,
        postgres_schema.name, str(account), str(each), "default", str(tmp_path), str(threads),
    ]  # fmt: skip
    processes = [
        subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(processes_n)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("*.ready"))) < processes_n:
        assert time.monotonic() < deadline
        assert all(p.poll() is None for p in processes), [p.communicate() for p in processes]
        time.sleep(0.01)
    (tmp_path / "go").touch()
    results = []
    for p in processes:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    total = each * threads * processes_n
    print(results)
    assert sum(r["succeeded"] for r in results) == total, results
    assert _balance(event_store, account) == Decimal("0.01") * total
