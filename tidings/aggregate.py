"""Aggregates: pure decisions (``execute``) and pure state changes (``apply``).

An aggregate is any class whose no-argument constructor gives the state before its first event, with

- ``execute(self, command)``: decides, from the state alone, what happened. It returns an event, a list
  of events, a ``Multi``, or ``None`` (nothing happened), or raises a domain error. No I/O.
- ``apply(self, event)``: the state after ``event``, returned (usually a new frozen dataclass). It never
  raises for an event ``execute`` produced.

Example::

    @dataclass(frozen=True)
    class BankAccount:
        balance: Decimal = Decimal(0)

        def execute(self, command):
            match command:
                case Deposit(amount=amount):
                    return MoneyDeposited(command.account_id, amount, self.balance + amount, now())

        def apply(self, event):
            match event:
                case MoneyDeposited(balance=balance):
                    return replace(self, balance=balance)
            return self
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, Self, TypeVar

__all__ = ["Aggregate", "Multi", "apply_all", "produced"]

A = TypeVar("A", bound="Aggregate")


class Aggregate(Protocol):
    """What the dispatcher needs of an aggregate class's instances."""

    def execute(self, command: Any) -> Any: ...

    def apply(self, event: Any) -> Self: ...


class Multi(Generic[A]):
    """Several steps of one command, each deciding on the state the previous steps' events left.

    Commanded's ``Multi``: every step is run at once against the current state, and its events are
    applied before the next step runs. ``execute`` returns the ``Multi``; the dispatcher appends all
    its events together, or none if a step raises.

    Example::

        def execute(self, command: Withdraw):
            return (
                Multi(self)
                .execute(lambda account: account.withdraw(command.amount))
                .execute(lambda account: account.flag_if_overdrawn())
            )
    """

    def __init__(self, aggregate: A) -> None:
        self.aggregate = aggregate
        self.events: list[object] = []

    def execute(self, step: Callable[[A], Any]) -> Multi[A]:
        """Run ``step`` on the state so far and apply what it returns; return ``self`` to chain."""
        for event in produced(step(self.aggregate)):
            self.aggregate = self.aggregate.apply(event)
            self.events.append(event)
        return self


def produced(result: Any) -> list[object]:
    """What an ``execute`` returned, as a list of events."""
    if result is None:
        return []
    if isinstance(result, Multi):
        return list(result.events)
    if isinstance(result, list | tuple):
        return list(result)
    return [result]


def apply_all(aggregate: A, events: Iterable[object]) -> A:
    """The state after ``events``, in order."""
    for event in events:
        aggregate = aggregate.apply(event)
    return aggregate
