"""A dispatch that joins the caller's transaction (``dispatch(..., connection=...)``): its events commit
with the caller's other writes or not at all, on the real PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal
from typing import Any

import pytest

from eventstore import PostgresEventStore, StreamNotFound
from eventstore.acknowledgements import Acknowledgements
from examples.bank.accounts import BankAccount, Deposit, OpenAccount, Withdraw
from tests.eventstore.relay_support import wait_until
from tests.tidings.test_dispatch import app_for, open_account
from tidings import ConsistencyTimeout, ExecutionResult


def _stream(account: uuid.UUID) -> str:
    return f"account-{account}"


def test_a_rolled_back_transaction_leaves_neither_events_nor_a_cached_state(
    event_store: PostgresEventStore,
) -> None:
    app = app_for(event_store)
    account = open_account(app)
    balances = []

    def deposit_then_change_its_mind() -> None:
        with event_store.connection() as conn:
            state = app.dispatch(
                Deposit(account, Decimal("5.00")), connection=conn, returning="aggregate_state"
            )
            balances.append(state.balance)
            raise RuntimeError("the caller changed its mind")

    with pytest.raises(RuntimeError, match="the caller changed its mind"):
        deposit_then_change_its_mind()
    assert balances == [Decimal("5.00")], "the command ran in the transaction"
    assert len(event_store.read_stream_forward(_stream(account))) == 1
    # The next dispatch starts from what was committed, not from the state the rolled-back one reached.
    state = app.dispatch(Deposit(account, Decimal("1.00")), returning="aggregate_state")
    assert state.balance == Decimal("1.00")


def test_commands_in_one_transaction_see_each_others_events_and_commit_together(
    event_store: PostgresEventStore,
) -> None:
    app = app_for(event_store)
    account, other = uuid.uuid4(), uuid.uuid4()
    with event_store.connection() as conn:
        app.dispatch(OpenAccount(account, "Ada"), connection=conn)
        app.dispatch(Deposit(account, Decimal("10.00")), connection=conn)
        result = app.dispatch(
            Withdraw(account, Decimal("4.00")), connection=conn, returning="execution_result"
        )
        app.dispatch(OpenAccount(other, "Grace"), connection=conn)
        assert isinstance(result, ExecutionResult)
        assert result.aggregate_version == 3
        assert result.aggregate_state.balance == Decimal("6.00")
        with pytest.raises(StreamNotFound):
            event_store.read_stream_forward(_stream(account))  # another session: nothing committed yet
    assert [e.stream_version for e in event_store.read_stream_forward(_stream(account))] == [1, 2, 3]
    assert len(event_store.read_stream_forward(_stream(other))) == 1
    state = app.dispatch(Deposit(account, Decimal("1.00")), returning="aggregate_state")
    assert isinstance(state, BankAccount)
    assert state.balance == Decimal("7.00")


def test_a_concurrent_writer_costs_a_retry_in_a_savepoint_not_the_callers_transaction(
    event_store: PostgresEventStore,
) -> None:
    app, other_app = app_for(event_store), app_for(event_store)
    account = open_account(app)
    outcome: dict[str, Any] = {}
    with event_store.connection() as first:
        # The first transaction appends and holds the stream's row until it commits.
        other_app.dispatch(Deposit(account, Decimal("2.00")), connection=first)

        def joined() -> None:
            try:
                with event_store.connection() as second:
                    outcome["result"] = app.dispatch(
                        Deposit(account, Decimal("3.00")), connection=second, returning="execution_result"
                    )
                    second.execute("SELECT 1")  # the transaction is still usable after the refused append
            except Exception as exc:  # noqa: BLE001 - reported by the assertions below
                outcome["error"] = exc

        thread = threading.Thread(target=joined)
        thread.start()
        wait_until(lambda: _waiting_for_a_lock(event_store), 30, "the second append waits for the first")
    thread.join(30)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.attempts == 2, "refused once (the first committed version 2), then appended as 3"
    assert result.aggregate_state.balance == Decimal("5.00")
    assert [e.stream_version for e in event_store.read_stream_forward(_stream(account))] == [1, 2, 3]


def test_a_joined_dispatch_never_waits_for_strong_handlers(event_store: PostgresEventStore) -> None:
    Acknowledgements(event_store).register_strong("never-acknowledges")
    app = app_for(event_store, consistency="strong", timeout=0.5)
    with pytest.raises(ConsistencyTimeout):
        open_account(app)  # on its own, a strong dispatch waits for the handler
    account = uuid.uuid4()
    with event_store.connection() as conn:
        app.dispatch(OpenAccount(account, "Ada"), connection=conn)  # its events are not committed yet
    assert len(event_store.read_stream_forward(_stream(account))) == 1


def _waiting_for_a_lock(store: PostgresEventStore) -> bool:
    with store.connection() as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
    return bool(row and row[0] > 0)
