"""Transfers between accounts: the transfer's own record (an aggregate), and the process manager that
carries a transfer through.

``RequestTransfer`` withdraws from the source account and records ``TransferRequested`` there (one
command, one stream). ``TransferProcess`` takes it from there:

1. ``TransferRequested`` starts an instance, which dispatches ``ReceiveTransfer`` to the target account.
2. The target records ``MoneyDeposited`` (the instance completes the transfer: ``CompleteTransfer``) or
   ``DepositRejected`` (a closed account: the instance refunds the source, ``RefundTransfer``, and fails
   the transfer, ``FailTransfer``). A target that was never opened refuses the command itself; ``error``
   answers with the same compensation.
3. ``TransferCompleted`` or ``TransferFailed`` stops the instance, and cancels its timeout.

Starting, the instance also schedules ``ExpireTransfer`` for ``timeout`` later (``workers.scheduling``).
A transfer that has not ended by then is stuck: its next event parked, say, or its worker stopped. The
transfer records ``TransferTimedOut`` for an operator, and no money moves: a deposit's outcome may be on
its way, and compensating blindly could pay twice. The instance notes it, and still ends the transfer
when its events arrive.

Every step's commands commit with the instance's state and the worker's checkpoint, so a worker killed
at any point neither loses nor repeats a withdrawal, a deposit or a refund.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

from examples.bank.accounts import AccountNotOpen, ReceiveTransfer, RefundTransfer, accounts
from examples.bank.events import (
    DepositRejected,
    MoneyDeposited,
    RejectionReason,
    TransferCompleted,
    TransferFailed,
    TransferRequested,
    TransferTimedOut,
)
from tidings.router import Router
from workers.delivery import EventMetadata
from workers.failure import Skip
from workers.process_manager import ProcessManager
from workers.process_routing import (
    ContinueStrict,
    ContinueWith,
    ProcessAlreadyStarted,
    ProcessNotStarted,
    StartStrict,
    Stop,
)
from workers.scheduling import CancelSchedule, ScheduleOnce

__all__ = [
    "CompleteTransfer",
    "ExpireTransfer",
    "FailTransfer",
    "Transfer",
    "TransferProcess",
    "TransferState",
    "bank",
    "transfers",
]


def _now() -> datetime:
    return datetime.now(UTC)


# --- the transfer's record ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CompleteTransfer:
    transfer_id: uuid.UUID
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class FailTransfer:
    transfer_id: uuid.UUID
    reason: RejectionReason
    compensated: bool = True
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class ExpireTransfer:
    """Scheduled when a transfer starts; fires if it has not ended by then."""

    transfer_id: uuid.UUID
    at: datetime = field(default_factory=_now)


@dataclass(frozen=True)
class Transfer:
    """How a transfer ended: once completed or failed, later commands change nothing."""

    transfer_id: uuid.UUID | None = None
    ended: bool = False
    timed_out: bool = False

    def execute(self, command: Any) -> Any:
        if self.ended:
            return None  # a repeated or late command: the transfer has its ending already
        match command:
            case ExpireTransfer():
                return None if self.timed_out else TransferTimedOut(command.transfer_id, command.at)
            case CompleteTransfer():
                return TransferCompleted(command.transfer_id, command.at)
            case FailTransfer():
                return TransferFailed(command.transfer_id, command.reason, command.at, command.compensated)
        raise TypeError(f"Transfer does not handle {type(command).__qualname__}")

    def apply(self, event: object) -> Transfer:
        match event:
            case TransferCompleted() | TransferFailed():
                return replace(self, transfer_id=event.transfer_id, ended=True)
            case TransferTimedOut():
                return replace(self, transfer_id=event.transfer_id, timed_out=True)
        return self


transfers = Router()
transfers.identify(Transfer, by="transfer_id", prefix="transfer-")
transfers.dispatch([CompleteTransfer, FailTransfer, ExpireTransfer], to=Transfer)

bank = Router()
"""Every command of the bank: accounts and transfers."""
bank.include(accounts)
bank.include(transfers)


# --- the process manager -----------------------------------------------------------------------------


@dataclass
class TransferState:
    status: str = "new"
    source: str = ""
    target: str = ""
    amount: Decimal = Decimal("0.00")
    timed_out: bool = False


class TransferProcess(ProcessManager):
    """Carries each transfer from its request to its completion, or to its compensation."""

    name = "bank.transfers"
    state_type = TransferState
    concurrency = 4
    timeout: ClassVar[timedelta] = timedelta(minutes=5)
    """How long a transfer may stay open before it is recorded as stuck (``TransferTimedOut``)."""

    def interested(self, event: Any, metadata: EventMetadata) -> Any:
        match event:
            case TransferRequested(transfer_id=t):
                return StartStrict(t)
            case MoneyDeposited(transfer_id=t) if t is not None:
                return ContinueStrict(t)
            case DepositRejected(transfer_id=t) | TransferTimedOut(transfer_id=t):
                return ContinueStrict(t)
            case TransferCompleted(transfer_id=t) | TransferFailed(transfer_id=t):
                return Stop(t)
        return None

    def handle(self, state: TransferState, event: Any) -> Any:
        match event:
            case TransferRequested(transfer_id=t):
                expiry = ScheduleOnce(_timeout_of(t), ExpireTransfer(t), event.requested_at + self.timeout)
                return [ReceiveTransfer(event.target_account, t, event.amount), expiry]
            case MoneyDeposited(account_id=account, transfer_id=uuid.UUID() as t) if (
                str(account) == state.target
            ):
                return [CompleteTransfer(t), CancelSchedule(_timeout_of(t))]
            case MoneyDeposited(account_id=account, transfer_id=uuid.UUID() as t) if (
                str(account) == state.source
            ):
                # The refund landed: the transfer failed, and nothing was lost.
                return [FailTransfer(t, RejectionReason.ACCOUNT_CLOSED), CancelSchedule(_timeout_of(t))]
            case DepositRejected():
                return RefundTransfer(uuid.UUID(state.source), event.transfer_id, state.amount)
        return None

    def apply(self, state: TransferState, event: Any) -> TransferState:
        match event:
            case TransferRequested():
                return TransferState(
                    "depositing", str(event.source_account), str(event.target_account), event.amount
                )
            case MoneyDeposited(account_id=account) if str(account) == state.target:
                return replace(state, status="completing")
            case DepositRejected():
                return replace(state, status="refunding")
            case TransferTimedOut():
                return replace(state, timed_out=True)
        return state

    def error(self, error: BaseException, failed: Any, context: Any) -> Any:
        if isinstance(error, ProcessNotStarted | ProcessAlreadyStarted):
            return Skip()  # an event of a transfer that has ended (or a repeated request): nothing to do
        if isinstance(failed, ReceiveTransfer) and isinstance(error, AccountNotOpen):
            # No such target: the money goes back, and the refund's deposit fails the transfer.
            source = uuid.UUID(context.state.source)
            refund = RefundTransfer(source, failed.transfer_id, failed.amount)
            return ContinueWith([refund, *context.pending_commands])
        return super().error(error, failed, context)


def _timeout_of(transfer_id: uuid.UUID) -> str:
    return f"transfer-timeout-{transfer_id}"
