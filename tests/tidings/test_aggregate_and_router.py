"""Aggregates and the router: pure logic, no services."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from examples.bank.accounts import (
    AccountClosedError,
    AccountNotOpen,
    BankAccount,
    CloseAccount,
    Deposit,
    InsufficientFunds,
    RequestTransfer,
    Withdraw,
    accounts,
)
from examples.bank.events import AccountOpened, MoneyDeposited, MoneyWithdrawn, TransferRequested
from tidings import DuplicateRegistration, InvalidIdentity, Multi, Router, UnregisteredCommand
from tidings.aggregate import apply_all, produced
from tidings.aggregate_cache import AggregateCache

AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ACCOUNT = uuid.UUID("00000000-0000-7000-8000-000000000001")


def opened(overdraft: str = "0.00") -> BankAccount:
    return BankAccount().apply(AccountOpened(ACCOUNT, "Ada", "EUR", AT, Decimal(overdraft)))


def test_execute_decides_from_state_alone_and_apply_evolves_it() -> None:
    account = opened()
    (deposited,) = produced(account.execute(Deposit(ACCOUNT, Decimal("10.00"), AT)))
    assert deposited == MoneyDeposited(ACCOUNT, Decimal("10.00"), Decimal("10.00"), AT)
    account = account.apply(deposited)
    assert account.balance == Decimal("10.00")
    with pytest.raises(InsufficientFunds):
        account.execute(Withdraw(ACCOUNT, Decimal("10.01"), AT))
    with pytest.raises(AccountNotOpen):
        BankAccount().execute(Deposit(ACCOUNT, Decimal("1"), AT))
    closed = account.apply(produced(account.execute(CloseAccount(ACCOUNT, AT)))[0])
    with pytest.raises(AccountClosedError):
        closed.execute(Deposit(ACCOUNT, Decimal("1"), AT))


def test_a_multi_decides_each_step_on_the_state_the_previous_steps_left() -> None:
    transfer = uuid.uuid4()
    command = RequestTransfer(transfer, ACCOUNT, uuid.uuid4(), Decimal("30.00"), "rent", AT)
    account = opened(overdraft="50.00")
    result = account.execute(command)
    assert isinstance(result, Multi)
    withdrawn, requested = produced(result)
    assert withdrawn == MoneyWithdrawn(ACCOUNT, Decimal("30.00"), Decimal("-30.00"), AT, transfer)
    assert isinstance(requested, TransferRequested)
    assert result.aggregate.balance == Decimal("-30.00"), "the Multi carries the state after its steps"
    # A second step that fails fails the whole command: the dispatcher appends nothing of a raised Multi.
    with pytest.raises(InsufficientFunds):
        Multi(account).execute(lambda a: a._withdraw(Decimal("40"), AT)).execute(
            lambda a: a._withdraw(Decimal("40"), AT)
        )


@given(
    amounts=st.lists(st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1000"), places=2), max_size=30)
)
def test_the_balance_is_the_sum_of_deposits_whatever_their_order(amounts: list[Decimal]) -> None:
    account = opened()
    for amount in amounts:
        account = apply_all(account, produced(account.execute(Deposit(ACCOUNT, amount, AT))))
    assert account.balance == sum(amounts, Decimal("0.00"))


def test_produced_normalises_what_execute_returns() -> None:
    assert produced(None) == []
    assert produced("e") == ["e"]
    assert produced(["a", "b"]) == ["a", "b"]
    assert produced(("a",)) == ["a"]


# --- the router ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ping:
    target: object


def test_routes_give_the_stream_from_prefix_and_identity() -> None:
    assert (
        accounts.route(Deposit(ACCOUNT, Decimal(1))).stream_id(Deposit(ACCOUNT, Decimal(1)))
        == f"account-{ACCOUNT}"
    )
    transfer = RequestTransfer(uuid.uuid4(), ACCOUNT, uuid.uuid4(), Decimal(1))
    assert accounts.route(transfer).stream_id(transfer) == f"account-{ACCOUNT}"

    router = Router()
    router.dispatch(Ping, to=BankAccount, identity=lambda c: c.target, identity_prefix=lambda: "tenant-a:")
    assert router.route(Ping(7)).stream_id(Ping(7)) == "tenant-a:7"


@pytest.mark.parametrize("target", [None, "", True, 1.5, b"x", "has\x00nul", "x" * 1000])
def test_an_identity_that_is_no_identity_is_refused(target: object) -> None:
    router = Router()
    router.dispatch(Ping, to=BankAccount, identity="target")
    with pytest.raises(InvalidIdentity, match="Ping"):
        router.route(Ping(target)).stream_id(Ping(target))


def test_each_command_type_has_one_route_and_unrouted_commands_say_how_to_route_them() -> None:
    router = Router()
    router.dispatch(Ping, to=BankAccount, identity="target")
    with pytest.raises(DuplicateRegistration, match="Ping is already routed"):
        router.dispatch(Ping, to=BankAccount, identity="target")
    with pytest.raises(UnregisteredCommand, match=r"router.dispatch\(Deposit, to=<Aggregate>"):
        router.route(Deposit(ACCOUNT, Decimal(1)))
    with pytest.raises(TypeError, match="no identity for BankAccount"):
        Router().dispatch(Deposit, to=BankAccount)


def test_routers_compose_and_refuse_overlaps() -> None:
    pings = Router()
    pings.dispatch(Ping, to=BankAccount, identity="target")
    composed = Router.compose(accounts, pings)
    assert set(composed.commands()) == {*accounts.commands(), Ping}
    with pytest.raises(DuplicateRegistration):
        Router.compose(pings, pings)


def test_command_handlers_route_to_their_aggregate() -> None:
    class Handler:
        def handle(self, aggregate: BankAccount, command: Ping) -> None:
            return None

    router = Router()
    router.dispatch(Ping, to=Handler(), aggregate=BankAccount, identity="target")
    registration = router.route(Ping(1))
    assert (registration.aggregate, type(registration.handler)) == (BankAccount, Handler)
    with pytest.raises(TypeError, match="command handler"):
        Router().dispatch(Ping, to=Handler(), identity="target")  # type: ignore[arg-type]


def test_the_cache_forgets_the_idle_and_the_least_recently_used() -> None:
    cache = AggregateCache(max_aggregates=2, lifespan=60)
    cache.put("a", "A", 1)
    cache.put("b", "B", 1)
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", "C", 1)
    assert cache.get("b") is None, "the least recently used went"
    assert cache.get("a") is not None
    assert cache.get("c") is not None
    cache.put("d", "D", 1, lifespan=0)  # a lifespan of 0 never caches
    assert cache.get("d") is None
    idle = AggregateCache(lifespan=0.0001)
    idle.put("e", "E", 1)
    deadline = datetime.now(UTC).timestamp() + 1
    while idle.get("e") is not None:
        assert datetime.now(UTC).timestamp() < deadline
    assert len(idle) == 0
