"""The bank's events. Each has its Avro schema at ``schemas/bank/<Name>/vN.avsc``; the codec refuses to
start if a class and the latest version of its schema disagree.

Money is ``Decimal`` (Avro decimal, precision 18, scale 2); times are aware UTC datetimes.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from tidings import TypeRegistry

__all__ = [
    "AccountClosed",
    "AccountOpened",
    "DepositRejected",
    "MoneyDeposited",
    "MoneyWithdrawn",
    "RejectionReason",
    "TransferCompleted",
    "TransferFailed",
    "TransferRequested",
    "TransferTimedOut",
    "events",
]

events = TypeRegistry(namespace="bank")


class RejectionReason(enum.Enum):
    ACCOUNT_CLOSED = "account closed"
    INSUFFICIENT_FUNDS = "insufficient funds"
    CURRENCY_MISMATCH = "currency mismatch"


@events.register
@dataclass(frozen=True, slots=True)
class AccountOpened:
    account_id: uuid.UUID
    owner: str
    currency: str
    opened_at: datetime
    overdraft_limit: Decimal
    tags: list[str] = field(default_factory=list)


@events.register
@dataclass(frozen=True, slots=True)
class MoneyDeposited:
    account_id: uuid.UUID
    amount: Decimal
    balance: Decimal
    deposited_at: datetime
    transfer_id: uuid.UUID | None = None


@events.register
@dataclass(frozen=True, slots=True)
class MoneyWithdrawn:
    account_id: uuid.UUID
    amount: Decimal
    balance: Decimal
    withdrawn_at: datetime
    transfer_id: uuid.UUID | None = None


@events.register
@dataclass(frozen=True, slots=True)
class DepositRejected:
    account_id: uuid.UUID
    transfer_id: uuid.UUID
    reason: RejectionReason
    rejected_at: datetime


@events.register
@dataclass(frozen=True, slots=True)
class AccountClosed:
    account_id: uuid.UUID
    closed_on: date
    remarks: dict[str, str] = field(default_factory=dict)


@events.register
@dataclass(frozen=True, slots=True)
class TransferRequested:
    transfer_id: uuid.UUID
    source_account: uuid.UUID
    target_account: uuid.UUID
    amount: Decimal
    requested_at: datetime
    reference: str | None = None


@events.register
@dataclass(frozen=True, slots=True)
class TransferCompleted:
    transfer_id: uuid.UUID
    completed_at: datetime


@events.register
@dataclass(frozen=True, slots=True)
class TransferFailed:
    transfer_id: uuid.UUID
    reason: RejectionReason
    failed_at: datetime
    compensated: bool = True


@events.register
@dataclass(frozen=True, slots=True)
class TransferTimedOut:
    """The transfer had not ended when its timeout came: stuck, for an operator to look at."""

    transfer_id: uuid.UUID
    timed_out_at: datetime
