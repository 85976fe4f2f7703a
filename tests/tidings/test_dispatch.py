"""Dispatching commands to aggregates on the real PostgreSQL: options, middleware, concurrency, errors."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest

from eventstore import PostgresEventStore
from examples.bank.accounts import (
    BankAccount,
    Deposit,
    InsufficientFunds,
    OpenAccount,
    RequestTransfer,
    Withdraw,
    accounts,
)
from examples.bank.events import MoneyDeposited, MoneyWithdrawn, TransferRequested, events
from tests.tidings.avro_support import SCHEMAS
from tidings import (
    AggregateCache,
    Application,
    DispatchHalted,
    EventMapper,
    ExecutionResult,
    ExecutionTimeout,
    InvalidCommand,
    InvalidIdentity,
    Middleware,
    Pipeline,
    TooManyAttempts,
    UnregisteredCommand,
)
from tidings.avro import AvroCodec, SchemaSet
from tidings.middleware import CommandValidation

MAPPER = EventMapper(AvroCodec(events, SchemaSet.load(SCHEMAS)))


def app_for(store: PostgresEventStore, **options: Any) -> Application:
    return Application(store, MAPPER, accounts, **options)


def open_account(app: Application, overdraft: str = "0.00") -> uuid.UUID:
    account = uuid.uuid4()
    app.dispatch(OpenAccount(account, "Ada", overdraft_limit=Decimal(overdraft)))
    return account


def test_returning_chooses_the_answer(event_store: PostgresEventStore) -> None:
    app = app_for(event_store)
    account = open_account(app)
    assert app.dispatch(Deposit(account, Decimal("5.00"))) is None
    state = app.dispatch(Deposit(account, Decimal("5.00")), returning="aggregate_state")
    assert isinstance(state, BankAccount)
    assert state.balance == Decimal("10.00")
    assert app.dispatch(Deposit(account, Decimal("1.00")), returning="aggregate_version") == 4
    (event,) = app.dispatch(Deposit(account, Decimal("1.00")), returning="events")
    assert isinstance(event, MoneyDeposited)
    assert event.balance == Decimal("12.00")
    result = app.dispatch(Withdraw(account, Decimal("2.00")), returning="execution_result")
    assert isinstance(result, ExecutionResult)
    assert (result.stream_id, result.aggregate_version, result.attempts) == (f"account-{account}", 6, 1)
    with pytest.raises(ValueError, match="returning='everything'"):
        app.dispatch(Deposit(account, Decimal("1")), returning="everything")  # type: ignore[arg-type]
    assert len(event_store.read_stream_forward(f"account-{account}")) == 6, "a refused option appends nothing"


def test_events_carry_the_commands_ids_and_metadata(event_store: PostgresEventStore) -> None:
    app = app_for(event_store)
    account = open_account(app)
    command_uuid, correlation = uuid.uuid4(), uuid.uuid4()
    app.dispatch(
        Deposit(account, Decimal("3.00")),
        command_uuid=command_uuid,
        correlation_id=correlation,
        metadata={"user": "ada"},
    )
    recorded = event_store.read_stream_forward(f"account-{account}")[-1]
    assert recorded.causation_id == command_uuid, "causation defaults to the command's uuid"
    assert recorded.correlation_id == correlation
    stored = json.loads(recorded.metadata)
    assert {k: v for k, v in stored.items() if k not in ("traceparent", "tracestate")} == {"user": "ada"}
    cause = uuid.uuid4()
    app.dispatch(Deposit(account, Decimal("1.00")), causation_id=cause)
    assert event_store.read_stream_forward(f"account-{account}")[-1].causation_id == cause


def test_a_multi_appends_all_its_events_or_none(event_store: PostgresEventStore) -> None:
    app = app_for(event_store)
    account = open_account(app, overdraft="100.00")
    transfer = RequestTransfer(uuid.uuid4(), account, uuid.uuid4(), Decimal("60.00"))
    withdrawn, requested = app.dispatch(transfer, returning="events")
    assert isinstance(withdrawn, MoneyWithdrawn)
    assert isinstance(requested, TransferRequested)
    with pytest.raises(InsufficientFunds):
        app.dispatch(RequestTransfer(uuid.uuid4(), account, uuid.uuid4(), Decimal("60.00")))
    assert [e.event_type for e in event_store.read_stream_forward(f"account-{account}")] == [
        "bank.AccountOpened",
        "bank.MoneyWithdrawn",
        "bank.TransferRequested",
    ]


def test_a_domain_error_passes_through_and_appends_nothing(event_store: PostgresEventStore) -> None:
    app = app_for(event_store)
    account = open_account(app)
    with pytest.raises(InsufficientFunds, match="asked 1"):
        app.dispatch(Withdraw(account, Decimal("1")))
    assert len(event_store.read_stream_forward(f"account-{account}")) == 1


def test_bad_commands_are_refused_before_anything_runs(event_store: PostgresEventStore) -> None:
    app = app_for(event_store, middleware=(CommandValidation(),))
    with pytest.raises(InvalidCommand, match="amount must be positive"):
        app.dispatch(Deposit(uuid.uuid4(), Decimal("-1")))
    with pytest.raises(InvalidIdentity, match="account_id gave None"):
        app.dispatch(Deposit(None, Decimal("1")))  # type: ignore[arg-type]
    with pytest.raises(UnregisteredCommand):
        app.dispatch(object())


def test_a_stale_aggregate_catches_up_and_retries(event_store: PostgresEventStore) -> None:
    first, second = app_for(event_store), app_for(event_store)
    account = open_account(first)
    second.dispatch(Deposit(account, Decimal("1.00")))  # second now caches the account at version 2
    first.dispatch(Deposit(account, Decimal("1.00")))  # first's cache is at version 1: one retry
    result = second.dispatch(Deposit(account, Decimal("1.00")), returning="execution_result")
    assert result.attempts == 2, "second met version 3, read the missed event and tried again"
    assert result.aggregate_state.balance == Decimal("3.00")


def test_too_many_attempts_when_retries_run_out(event_store: PostgresEventStore) -> None:
    first, second = app_for(event_store), app_for(event_store)
    account = open_account(first)
    second.dispatch(Deposit(account, Decimal("1.00")))
    first.dispatch(Deposit(account, Decimal("1.00")))
    with pytest.raises(TooManyAttempts, match="1 attempts each met a newer version"):
        second.dispatch(Deposit(account, Decimal("1.00")), retry_attempts=0)
    # The stale entry was dropped: the next dispatch reads the stream afresh.
    assert second.dispatch(Deposit(account, Decimal("1.00")), returning="execution_result").attempts == 1


def test_a_dispatch_past_its_timeout_appends_nothing(event_store: PostgresEventStore) -> None:
    app = app_for(event_store, cache=AggregateCache(max_aggregates=0))
    account = open_account(app)
    with pytest.raises(ExecutionTimeout, match="nothing was appended"):
        app.dispatch(Deposit(account, Decimal("1.00")), timeout=0)
    assert len(event_store.read_stream_forward(f"account-{account}")) == 1


class Recording(Middleware):
    def __init__(self, name: str, calls: list[str], halt: object = None) -> None:
        self.name, self.calls, self.halt = name, calls, halt

    def before_dispatch(self, pipeline: Pipeline) -> None:
        self.calls.append(f"{self.name}.before")
        pipeline.assign(self.name, True)
        if self.halt is not None:
            pipeline.halt(self.halt if self.halt != "nothing" else None)

    def after_dispatch(self, pipeline: Pipeline) -> None:
        self.calls.append(f"{self.name}.after:{len(pipeline.events)}")

    def after_failure(self, pipeline: Pipeline) -> None:
        self.calls.append(f"{self.name}.failure:{type(pipeline.error).__name__}")


def test_middleware_wraps_the_dispatch_in_order(event_store: PostgresEventStore) -> None:
    calls: list[str] = []
    app = app_for(event_store, middleware=(Recording("a", calls), Recording("b", calls)))
    account = open_account(app)
    assert calls == ["a.before", "b.before", "b.after:1", "a.after:1"]
    calls.clear()
    with pytest.raises(InsufficientFunds):
        app.dispatch(Withdraw(account, Decimal("5")))
    assert calls == ["a.before", "b.before", "b.failure:InsufficientFunds", "a.failure:InsufficientFunds"]


def test_a_halted_dispatch_runs_nothing_and_answers_for_the_middleware(
    event_store: PostgresEventStore,
) -> None:
    calls: list[str] = []
    responding = app_for(
        event_store, middleware=(Recording("a", calls, halt="cached answer"), Recording("b", calls))
    )
    account = uuid.uuid4()
    assert responding.dispatch(OpenAccount(account, "Ada")) == "cached answer"
    assert calls == ["a.before"], "later middleware and the aggregate never ran"
    refusing = app_for(event_store, middleware=(Recording("a", calls, halt=PermissionError("no")),))
    with pytest.raises(PermissionError, match="no"):
        refusing.dispatch(OpenAccount(account, "Ada"))
    silent = app_for(event_store, middleware=(Recording("a", calls, halt="nothing"),))
    with pytest.raises(DispatchHalted):
        silent.dispatch(OpenAccount(account, "Ada"))
    assert event_store.list_streams() == []


def test_dispatch_async_runs_off_the_event_loop(event_store: PostgresEventStore) -> None:
    app = app_for(event_store)
    account = open_account(app)

    async def deposit_many() -> list[int]:
        return list(
            await asyncio.gather(
                *(
                    app.dispatch_async(Deposit(account, Decimal("1.00")), returning="aggregate_version")
                    for _ in range(5)
                )
            )
        )

    versions = asyncio.run(deposit_many())
    assert sorted(versions) == [2, 3, 4, 5, 6]
    assert app.dispatch(Deposit(account, Decimal("0.01")), returning="aggregate_state").balance == Decimal(
        "5.01"
    )


def test_a_registrations_lifespan_overrides_the_caches(event_store: PostgresEventStore) -> None:
    from tidings import Router

    router = Router()
    router.dispatch(
        OpenAccount, to=BankAccount, identity="account_id", identity_prefix="account-", lifespan=0
    )
    router.dispatch(Deposit, to=BankAccount, identity="account_id", identity_prefix="account-")
    app = Application(event_store, MAPPER, router)
    account = uuid.uuid4()
    app.dispatch(OpenAccount(account, "Ada"))
    assert app.cache.get(f"account-{account}") is None, "lifespan=0: not kept after OpenAccount"
    app.dispatch(Deposit(account, Decimal("1.00")))
    assert app.cache.get(f"account-{account}") is not None, "kept for the cache's lifespan after Deposit"


class BrokenApply(BankAccount):
    """An aggregate whose apply breaks on deposits (a bug tidings must name, not hide)."""

    def apply(self, event: object) -> BankAccount:
        if isinstance(event, MoneyDeposited):
            raise KeyError("balance")
        return super().apply(event)


def test_an_apply_that_raises_is_execution_failed_and_says_what_was_committed(
    event_store: PostgresEventStore,
) -> None:
    from tidings import ExecutionFailed, Router

    router = Router()
    router.dispatch([OpenAccount, Deposit], to=BrokenApply, identity="account_id", identity_prefix="account-")
    app = Application(event_store, MAPPER, router)
    account = uuid.uuid4()
    app.dispatch(OpenAccount(account, "Ada"))
    with pytest.raises(
        ExecutionFailed, match=r"apply raised on MoneyDeposited .*the events are committed"
    ) as raised:
        app.dispatch(Deposit(account, Decimal("1.00")))
    assert isinstance(raised.value.__cause__, KeyError)
    assert app.cache.get(f"account-{account}") is None, "no state that missed an event stays cached"
    # Replaying the stream meets the same event: nothing more is appended.
    with pytest.raises(ExecutionFailed, match="nothing was appended"):
        app.dispatch(Deposit(account, Decimal("1.00")))
    assert len(event_store.read_stream_forward(f"account-{account}")) == 2
