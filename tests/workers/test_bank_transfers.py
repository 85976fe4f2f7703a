"""The bank's transfer process manager on the real PostgreSQL and Kafka: completed, compensated on a
rejected deposit, compensated on a target that was never opened; money conserved."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

from eventstore import PostgresEventStore, StreamNotFound
from examples.bank.accounts import CloseAccount, Deposit, OpenAccount, RequestTransfer
from examples.bank.events import (
    MoneyDeposited,
    TransferCompleted,
    TransferFailed,
    TransferRequested,
    TransferTimedOut,
)
from examples.bank.transfers import TransferProcess, bank
from tests.tidings.test_dispatch import MAPPER
from tests.workers.worker_support import eventually, stack
from tidings import Application
from tidings.pytest_plugin import KafkaNamespace
from workers import EventMetadata
from workers.process_instances import ProcessInstances
from workers.scheduling import ScheduledCommands, ScheduleOnce, Scheduler


def balance(store: PostgresEventStore, account: uuid.UUID) -> Decimal:
    """The balance the account's last deposit or withdrawal left."""
    moves = [MAPPER.event_of(e) for e in store.read_stream_forward(f"account-{account}")]
    return Decimal([m.balance for m in moves if hasattr(m, "balance")][-1])


def ending(store: PostgresEventStore, transfer: uuid.UUID) -> Any:
    try:
        recorded = store.read_stream_forward(f"transfer-{transfer}")
    except StreamNotFound:
        return None
    (only,) = recorded
    return MAPPER.event_of(only)


def test_transfers_complete_or_are_compensated_and_money_is_conserved(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    app = Application(event_store, MAPPER, bank)
    source, target, closed, missing = (uuid.uuid4() for _ in range(4))
    for account in (source, target, closed):
        app.dispatch(OpenAccount(account, "Ada"))
    app.dispatch(Deposit(source, Decimal("100.00")))
    app.dispatch(CloseAccount(closed))
    done, rejected, nowhere = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    app.dispatch(RequestTransfer(done, source, target, Decimal("30.00")))
    app.dispatch(RequestTransfer(rejected, source, closed, Decimal("20.00")))
    app.dispatch(RequestTransfer(nowhere, source, missing, Decimal("10.00")))
    with stack(event_store, kafka_namespace, partitions=4, mapper=MAPPER, router=bank) as s:

        class Transfers(TransferProcess):
            name = s.name("transfers")

        s.run(Transfers)
        eventually(
            lambda: all(ending(event_store, t) is not None for t in (done, rejected, nowhere)),
            what="every transfer ended",
        )
        instances = ProcessInstances(event_store)
        eventually(lambda: instances.count(Transfers.name) == 0, what="every instance stopped")
    assert isinstance(ending(event_store, done), TransferCompleted)
    for failed in (rejected, nowhere):
        event = ending(event_store, failed)
        assert isinstance(event, TransferFailed)
        assert event.compensated
    assert balance(event_store, source) == Decimal("70.00"), "30 moved out; 20 and 10 came back"
    assert balance(event_store, target) == Decimal("30.00")
    refunds = [
        MAPPER.event_of(e)
        for e in event_store.read_stream_forward(f"account-{source}")
        if e.event_type.endswith("MoneyDeposited")
    ]
    assert sorted((r.transfer_id, r.amount) for r in refunds if r.transfer_id) == sorted(
        [(rejected, Decimal("20.00")), (nowhere, Decimal("10.00"))]
    ), "each refund once"
    rejections = [
        e for e in event_store.read_stream_forward(f"account-{closed}") if "Rejected" in e.event_type
    ]
    assert len(rejections) == 1


def test_a_stuck_transfer_is_recorded_as_timed_out_and_a_finished_one_cancels_its_timeout(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    app = Application(event_store, MAPPER, bank)
    source, target = uuid.uuid4(), uuid.uuid4()
    for account in (source, target):
        app.dispatch(OpenAccount(account, "Ada"))
    app.dispatch(Deposit(source, Decimal("100.00")))
    finished, stuck = uuid.uuid4(), uuid.uuid4()
    with stack(event_store, kafka_namespace, partitions=2, mapper=MAPPER, router=bank) as s:

        class Transfers(TransferProcess):
            name = s.name("transfers")
            timeout = timedelta(seconds=1)

            def interested(self, event: Any, metadata: EventMetadata) -> Any:
                if isinstance(event, MoneyDeposited) and event.transfer_id == stuck:
                    return None  # its deposit never reaches the process manager: the transfer is stuck
                return super().interested(event, metadata)

            def handle(self, state: Any, event: Any) -> Any:
                commands = super().handle(state, event)
                if isinstance(event, TransferRequested) and event.transfer_id == finished:
                    # The finished transfer gets a timeout it cannot meet on a loaded machine, so what
                    # removes its schedule is the cancellation under test, never the timer firing.
                    return [
                        replace(c, due_at=c.due_at + timedelta(hours=1)) if isinstance(c, ScheduleOnce) else c
                        for c in commands
                    ]
                return commands

        scheduler = Scheduler(app, ScheduledCommands(event_store, bank), poll_seconds=0.05)
        scheduler.start()
        try:
            s.run(Transfers)
            app.dispatch(RequestTransfer(finished, source, target, Decimal("10.00")))
            app.dispatch(RequestTransfer(stuck, source, target, Decimal("5.00")))
            instances = ProcessInstances(event_store)
            eventually(
                lambda: (i := instances.get(Transfers.name, str(stuck))) is not None and i.state["timed_out"],
                what="the stuck transfer timed out, and its instance knows",
            )
            eventually(lambda: ending(event_store, finished) is not None, what="the finished transfer ended")
        finally:
            scheduler.stop()
    assert isinstance(ending(event_store, finished), TransferCompleted)
    (timed_out,) = event_store.read_stream_forward(f"transfer-{stuck}")
    assert isinstance(MAPPER.event_of(timed_out), TransferTimedOut)
    assert ScheduledCommands(event_store, bank).pending() == [], "the finished transfer cancelled its timeout"
    assert balance(event_store, target) == Decimal("15.00"), "no money moved on the timeout"
