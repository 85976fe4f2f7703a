"""Bank accounts: the commands, the aggregate that decides on them, and their route.

The aggregate is pure: it decides from its state and the command alone, and the time of each event
comes from the command (``at``), so that the same command on the same state gives the same events.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from examples.bank.events import (
    AccountClosed,
    AccountOpened,
    DepositRejected,
    MoneyDeposited,
    MoneyWithdrawn,
    RejectionReason,
    TransferRequested,
)
from tidings.aggregate import Multi
from tidings.router import Router

__all__ = [
    "AccountAlreadyOpen",
    "AccountClosedError",
    "AccountNotOpen",
    "BankAccount",
    "CloseAccount",
    "Deposit",
    "InsufficientFunds",
    "OpenAccount",
    "ReceiveTransfer",
    "RefundTransfer",
    "RequestTransfer",
    "Withdraw",
    "accounts",
]


def _now() -> datetime:
    return datetime.now(UTC)


def _positive(amount: Decimal) -> list[str]:
    return [] if amount > 0 else [f"amount must be positive, got {amount}"]


# --- commands ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenAccount:
    account_id: uuid.UUID
    owner: str
    currency: str = "EUR"
    overdraft_limit: Decimal = Decimal("0.00")
    at: datetime = field(default_factory=_now)

    def validate(self) -> list[str]:
        problems = []
        if not self.owner.strip():
            problems.append("owner must not be empty")
        if len(self.currency) != 3 or not self.currency.isupper():
            problems.append(f"currency {self.currency!r} is not an ISO 4217 code")
        if self.overdraft_limit < 0:
            problems.append("overdraft_limit must not be negative")
        return problems


@dataclass(frozen=True)
class Deposit:
    account_id: uuid.UUID
    amount: Decimal
    at: datetime = field(default_factory=_now)

    def validate(self) -> list[str]:
        return _positive(self.amount)


@dataclass(frozen=True)
class Withdraw:
    account_id: uuid.UUID
    amount: Decimal
    at: datetime = field(default_factory=_now)

    def validate(self) -> list[str]:
        return _positive(self.amount)


@dataclass(frozen=True)
class CloseAccount:
    account_id: uuid.UUID
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class RequestTransfer:
    transfer_id: uuid.UUID
    source_account: uuid.UUID
    target_account: uuid.UUID
    amount: Decimal
    reference: str | None = None
    at: datetime = field(default_factory=_now)

    def validate(self) -> list[str]:
        problems = _positive(self.amount)
        if self.source_account == self.target_account:
            problems.append("a transfer needs two different accounts")
        return problems


@dataclass(frozen=True)
class ReceiveTransfer:
    """A transfer's deposit into its target account: refused with ``DepositRejected``, not an error,
    when the account cannot take it (the transfer is then compensated)."""

    account_id: uuid.UUID
    transfer_id: uuid.UUID
    amount: Decimal
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class RefundTransfer:
    """A failed transfer's money, back into its source account."""

    account_id: uuid.UUID
    transfer_id: uuid.UUID
    amount: Decimal
    at: datetime = field(default_factory=_now)


# --- domain errors -----------------------------------------------------------------------------------


class AccountNotOpen(Exception):
    """The account has not been opened."""


class AccountAlreadyOpen(Exception):
    """The account is open already."""


class AccountClosedError(Exception):
    """The account is closed."""


class InsufficientFunds(Exception):
    """The balance and the overdraft limit do not cover the amount."""


# --- the aggregate -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BankAccount:
    account_id: uuid.UUID | None = None
    balance: Decimal = Decimal("0.00")
    overdraft_limit: Decimal = Decimal("0.00")
    closed: bool = False

    def execute(self, command: Any) -> Any:
        match command:
            case OpenAccount():
                if self.account_id is not None:
                    raise AccountAlreadyOpen(str(command.account_id))
                return AccountOpened(
                    command.account_id, command.owner, command.currency, command.at, command.overdraft_limit
                )
            case Deposit():
                self._require_open()
                return MoneyDeposited(
                    command.account_id, command.amount, self.balance + command.amount, command.at
                )
            case Withdraw():
                self._require_open()
                return self._withdraw(command.amount, command.at)
            case RequestTransfer():
                # Two steps: the withdrawal, then the request, decided on the balance it left.
                self._require_open()
                return (
                    Multi(self)
                    .execute(
                        lambda account: account._withdraw(command.amount, command.at, command.transfer_id)
                    )
                    .execute(
                        lambda account: TransferRequested(
                            command.transfer_id,
                            command.source_account,
                            command.target_account,
                            command.amount,
                            command.at,
                            command.reference,
                        )
                    )
                )
            case CloseAccount():
                self._require_open()
                return AccountClosed(command.account_id, command.at.date(), {"closed_by": "customer"})
            case ReceiveTransfer():
                if self.account_id is None:
                    raise AccountNotOpen(
                        f"no account {command.account_id} to receive transfer {command.transfer_id}"
                    )
                if self.closed:
                    return DepositRejected(
                        command.account_id, command.transfer_id, RejectionReason.ACCOUNT_CLOSED, command.at
                    )
                balance = self.balance + command.amount
                return MoneyDeposited(
                    command.account_id, command.amount, balance, command.at, command.transfer_id
                )
            case RefundTransfer():
                # The money goes back even to an account closed meanwhile: it must not vanish.
                balance = self.balance + command.amount
                return MoneyDeposited(
                    command.account_id, command.amount, balance, command.at, command.transfer_id
                )
        raise TypeError(f"BankAccount does not handle {type(command).__qualname__}")

    def apply(self, event: object) -> BankAccount:
        match event:
            case AccountOpened():
                return replace(self, account_id=event.account_id, overdraft_limit=event.overdraft_limit)
            case MoneyDeposited() | MoneyWithdrawn():
                return replace(self, balance=event.balance)
            case AccountClosed():
                return replace(self, closed=True)
        return self

    def _received(self, command: ReceiveTransfer | RefundTransfer) -> MoneyDeposited:
        balance = self.balance + command.amount
        return MoneyDeposited(command.account_id, command.amount, balance, command.at, command.transfer_id)

    def _require_open(self) -> None:
        if self.account_id is None:
            raise AccountNotOpen("open the account first")
        if self.closed:
            raise AccountClosedError(str(self.account_id))

    def _withdraw(
        self, amount: Decimal, at: datetime, transfer_id: uuid.UUID | None = None
    ) -> MoneyWithdrawn:
        if self.balance - amount < -self.overdraft_limit:
            raise InsufficientFunds(
                f"balance {self.balance}, overdraft {self.overdraft_limit}, asked {amount}"
            )
        assert self.account_id is not None
        return MoneyWithdrawn(self.account_id, amount, self.balance - amount, at, transfer_id)


accounts = Router()
accounts.identify(BankAccount, by="account_id", prefix="account-")
accounts.dispatch(
    [OpenAccount, Deposit, Withdraw, CloseAccount, ReceiveTransfer, RefundTransfer], to=BankAccount
)
accounts.dispatch(RequestTransfer, to=BankAccount, identity="source_account")
