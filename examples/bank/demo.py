"""The bank demo's workload and its invariants (``tidings demo`` runs them; ``workers.demo_cli`` is the
command around them).

- ``plan`` decides, from a seed, which accounts open with what money and which transfers run between
  them: most between open accounts, some to an account closed on purpose (the deposit is rejected and
  the transfer compensated) and some to an account that was never opened (the process manager's
  ``error`` compensates). Pure.
- ``Workload`` dispatches the plan through an ``Application`` from a pool of threads, as concurrent
  clients would.
- ``collect`` reads what happened from the store (each account's aggregate, each transfer's outcome, the
  read model); ``verify`` checks it against the plan. Pure, so that each invariant is tested on its own.

The invariants:

1. **Money is conserved**: the balances of all accounts add up to the money deposited, once every
   transfer has ended.
2. **Every transfer ended once**: completed, with the money in the target account, or failed, with the
   money refunded to the source exactly once. None is left open, none both.
3. **The read model equals the aggregates**: ``bank_balances`` shows each account's balance as its
   events do.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal, TypeVar

from psycopg import sql

from eventstore import PostgresEventStore, StreamNotFound
from examples.bank.accounts import (
    BankAccount,
    CloseAccount,
    Deposit,
    InsufficientFunds,
    OpenAccount,
    RequestTransfer,
)
from examples.bank.events import MoneyDeposited, TransferCompleted, TransferFailed, TransferRequested, events
from tidings import Application
from tidings.aggregate import apply_all
from tidings.mapper import EventMapper

__all__ = [
    "Facts",
    "Plan",
    "PlannedTransfer",
    "Settlement",
    "Workload",
    "collect",
    "plan",
    "settled",
    "verify",
]

INITIAL_DEPOSIT = Decimal("1000.00")
T = TypeVar("T")
Target = Literal["open", "closed", "unknown"]
Outcome = Literal["completed", "failed"]


@dataclass(frozen=True, slots=True)
class PlannedTransfer:
    transfer_id: uuid.UUID
    source: uuid.UUID
    target: uuid.UUID
    amount: Decimal
    target_kind: Target


@dataclass(frozen=True, slots=True)
class Plan:
    open_accounts: tuple[uuid.UUID, ...]
    """Opened and funded with ``INITIAL_DEPOSIT`` each: the sources and most targets."""
    closed_accounts: tuple[uuid.UUID, ...]
    """Opened and closed at once, without money: their deposits are rejected."""
    unknown_accounts: tuple[uuid.UUID, ...]
    """Never opened: a transfer to one is refused by the target and compensated."""
    transfers: tuple[PlannedTransfer, ...]

    @property
    def money(self) -> Decimal:
        return INITIAL_DEPOSIT * len(self.open_accounts)

    @property
    def accounts(self) -> tuple[uuid.UUID, ...]:
        """Every account that exists: what the aggregates and the read model are checked on."""
        return self.open_accounts + self.closed_accounts


def plan(accounts: int, transfers: int, seed: int = 0) -> Plan:
    """``accounts`` open accounts (at least 2) and ``transfers`` transfers among them, 5% of them to a
    closed account and 2% to one that was never opened. Amounts (1.00 to 20.00) are small beside the
    balances; a source that runs short all the same is refused by the bank (``Workload.refused``)."""
    if accounts < 2:
        raise ValueError("the demo needs at least 2 accounts")
    if transfers < 0:
        raise ValueError("the number of transfers cannot be negative")
    rng = random.Random(seed)  # noqa: S311 - a repeatable workload, not a secret

    def new_id() -> uuid.UUID:
        return uuid.UUID(int=rng.getrandbits(128), version=4)

    opened = tuple(new_id() for _ in range(accounts))
    closed = tuple(new_id() for _ in range(max(1, accounts // 20)))
    unknown = tuple(new_id() for _ in range(max(1, accounts // 50)))
    planned = []
    for _ in range(transfers):
        source = rng.choice(opened)
        roll = rng.random()
        kind: Target = "closed" if roll < 0.05 else "unknown" if roll < 0.07 else "open"
        pool = {"open": opened, "closed": closed, "unknown": unknown}[kind]
        target = rng.choice([account for account in pool if account != source])
        amount = Decimal(rng.randint(100, 2000)) / 100
        planned.append(PlannedTransfer(new_id(), source, target, amount, kind))
    return Plan(opened, closed, unknown, tuple(planned))


# --- dispatching --------------------------------------------------------------------------------------


@dataclass
class Workload:
    """Dispatches a plan through ``app`` from ``concurrency`` threads; ``progress`` counts each step."""

    app: Application
    plan: Plan
    concurrency: int = 8
    progress: Callable[[str], None] = lambda step: None
    refused: list[tuple[uuid.UUID, str]] = field(default_factory=list)
    """Transfers the source account refused when requested (never started: no outcome expected)."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open_accounts(self) -> None:
        def open_funded(account: uuid.UUID) -> None:
            self.app.dispatch(OpenAccount(account, f"customer {str(account)[:8]}"))
            self.app.dispatch(Deposit(account, INITIAL_DEPOSIT))
            self.progress("account")

        def open_closed(account: uuid.UUID) -> None:
            self.app.dispatch(OpenAccount(account, f"closed {str(account)[:8]}"))
            self.app.dispatch(CloseAccount(account))
            self.progress("account")

        self._each(open_funded, self.plan.open_accounts)
        self._each(open_closed, self.plan.closed_accounts)

    def request_transfers(self, rate: float = 0.0) -> None:
        """Request every planned transfer; with ``rate`` (per second), the i-th not before i / rate s.

        An offered rate below the system's capacity makes the latency the system's own; as fast as
        possible (0), it is mostly the queue the clients build."""
        start = time.monotonic()

        def request(numbered: tuple[int, PlannedTransfer]) -> None:
            index, transfer = numbered
            if rate > 0:
                time.sleep(max(0.0, start + index / rate - time.monotonic()))
            command = RequestTransfer(transfer.transfer_id, transfer.source, transfer.target, transfer.amount)
            try:
                # The transfer's id is its correlation id: every event of the transfer carries it.
                self.app.dispatch(command, correlation_id=transfer.transfer_id)
            except InsufficientFunds as error:
                with self._lock:
                    self.refused.append((transfer.transfer_id, str(error)))
            self.progress("transfer")

        self._each(request, enumerate(self.plan.transfers))

    def _each(self, action: Callable[[T], None], items: Iterable[T]) -> None:
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="demo-client") as pool:
            for future in [pool.submit(action, item) for item in items]:
                future.result()  # the first failure ends the workload, with its own traceback


# --- what happened ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settlement:
    outcome: Outcome
    requested_at: datetime
    settled_at: datetime

    @property
    def seconds(self) -> float:
        return (self.settled_at - self.requested_at).total_seconds()


@dataclass(frozen=True, slots=True)
class Facts:
    balances: dict[uuid.UUID, Decimal]
    """Each account's balance, from its events (the aggregate)."""
    transfer_deposits: dict[uuid.UUID, list[tuple[uuid.UUID, Decimal]]]
    """Per transfer id, the deposits that carried it: (account, amount). A refund is one to the source."""
    settlements: dict[uuid.UUID, list[Settlement]]
    """Per transfer id, how it ended (a list: ending twice is a violation to report, not to hide)."""
    read_model: dict[uuid.UUID, Decimal]
    """Each account's balance in the ``bank_balances`` read model."""


_ENDINGS: dict[str, Outcome] = {
    events.name_of(TransferCompleted): "completed",
    events.name_of(TransferFailed): "failed",
}


def settled(store: PostgresEventStore, transfer_ids: Sequence[uuid.UUID]) -> int:
    """How many of ``transfer_ids`` have ended (one query, for progress)."""
    query = sql.SQL(
        "SELECT count(DISTINCT stream_id) FROM {} WHERE event_type = ANY(%s) AND stream_id = ANY(%s)"
    )
    table = sql.Identifier(store.config.schema, "events")
    streams = [f"transfer-{t}" for t in transfer_ids]
    with store.connection() as conn:
        row = conn.execute(query.format(table), (list(_ENDINGS), streams)).fetchone()
    return int(row[0]) if row else 0


def collect(store: PostgresEventStore, mapper: EventMapper, plan: Plan) -> Facts:
    """Read, from the store, each account's events and each transfer's end, and the read model."""
    balances: dict[uuid.UUID, Decimal] = {}
    deposits: dict[uuid.UUID, list[tuple[uuid.UUID, Decimal]]] = {}
    requested_at: dict[uuid.UUID, datetime] = {}
    for account in plan.accounts:
        recorded = list(store.stream_forward(f"account-{account}"))
        decoded = [mapper.from_recorded(event)[0] for event in recorded]
        balances[account] = apply_all(BankAccount(), decoded).balance
        for record, event in zip(recorded, decoded, strict=True):
            if isinstance(event, MoneyDeposited) and event.transfer_id is not None:
                deposits.setdefault(event.transfer_id, []).append((event.account_id, event.amount))
            elif isinstance(event, TransferRequested):
                requested_at[event.transfer_id] = record.created_at
    settlements: dict[uuid.UUID, list[Settlement]] = {}
    for transfer_id, at in requested_at.items():
        try:
            ending = [e for e in store.stream_forward(f"transfer-{transfer_id}") if e.event_type in _ENDINGS]
        except StreamNotFound:
            continue
        settlements[transfer_id] = [Settlement(_ENDINGS[e.event_type], at, e.created_at) for e in ending]
    return Facts(balances, deposits, settlements, read_model(store, plan.accounts))


def read_model(store: PostgresEventStore, accounts: Sequence[uuid.UUID]) -> dict[uuid.UUID, Decimal]:
    query = sql.SQL("SELECT account_id, balance FROM {} WHERE account_id = ANY(%s)").format(
        sql.Identifier(store.config.schema, "bank_balances")
    )
    with store.connection() as conn:
        return {account: balance for account, balance in conn.execute(query, (list(accounts),))}


def verify(plan: Plan, facts: Facts, refused: Iterable[uuid.UUID] = ()) -> list[str]:
    """Every broken invariant, each said in a sentence; empty when the run was correct."""
    problems = []
    total = sum(facts.balances.values(), Decimal(0))
    if total != plan.money:
        problems.append(f"money is not conserved: the accounts hold {total}, {plan.money} was deposited")

    not_started = set(refused)
    for transfer in plan.transfers:
        if transfer.transfer_id in not_started:
            continue
        endings = facts.settlements.get(transfer.transfer_id, [])
        deposits = facts.transfer_deposits.get(transfer.transfer_id, [])
        into_target = [amount for account, amount in deposits if account == transfer.target]
        refunds = [amount for account, amount in deposits if account == transfer.source]
        what = f"transfer {transfer.transfer_id} ({transfer.target_kind} target)"
        if not endings:
            problems.append(f"{what} never ended")
        elif len(endings) > 1:
            problems.append(f"{what} ended {len(endings)} times")
        elif endings[0].outcome == "completed" and (into_target != [transfer.amount] or refunds):
            problems.append(
                f"{what} completed with deposits {_listed(into_target)} and refunds {_listed(refunds)}"
            )
        elif endings[0].outcome == "failed" and (refunds != [transfer.amount] or into_target):
            problems.append(
                f"{what} failed with refunds {_listed(refunds)} and deposits {_listed(into_target)}"
            )
        elif transfer.target_kind != "open" and endings[0].outcome == "completed":
            problems.append(f"{what} completed into an account that cannot take money")

    for account in plan.accounts:
        shown, actual = facts.read_model.get(account), facts.balances.get(account)
        if shown != actual:
            problems.append(f"the read model shows {shown} for account {account}, its events {actual}")
    return problems


def _listed(amounts: list[Decimal]) -> str:
    return "[" + ", ".join(str(amount) for amount in amounts) + "]"
