"""Scheduled commands on the real PostgreSQL: fired once at their time whatever the number of schedulers,
never once cancelled, scheduled from a process manager in its event's transaction, failures kept."""

from __future__ import annotations

import collections
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from eventstore import PostgresEventStore, StoreConfig
from examples.bank.accounts import CloseAccount, Deposit, OpenAccount, accounts
from examples.bank.events import AccountClosed, AccountOpened
from examples.bank.transfers import bank
from tests.tidings.test_dispatch import MAPPER
from tests.workers.cli_support import WorkerProcess, assigned, worker_env
from tests.workers.worker_support import eventually, stack
from tidings import Application
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema
from workers.process_manager import ProcessManager
from workers.process_routing import Continue, Start
from workers.scheduling import (
    CancelSchedule,
    ScheduledCommands,
    ScheduleOnce,
    Scheduler,
    UnknownScheduledCommand,
)


@pytest.fixture
def schedulers(event_store: PostgresEventStore) -> Iterator[list[Scheduler]]:
    """Two schedulers, each with its own store (its own sessions), as two workers would have."""
    stores = [
        PostgresEventStore(StoreConfig(event_store.config.url, event_store.config.schema)) for _ in "ab"
    ]
    running = [
        Scheduler(Application(store, MAPPER, accounts), ScheduledCommands(store, accounts), poll_seconds=0.05)
        for store in stores
    ]
    yield running
    for scheduler in running:
        scheduler.stop()
    for store in stores:
        store.close()


def _deposits(store: PostgresEventStore, account: uuid.UUID) -> list[Any]:
    return [
        e for e in store.read_stream_forward(f"account-{account}") if e.event_type.endswith("MoneyDeposited")
    ]


def test_each_schedule_fires_once_with_two_schedulers_and_a_cancelled_one_never(
    event_store: PostgresEventStore, schedulers: list[Scheduler]
) -> None:
    app = Application(event_store, MAPPER, accounts)
    account = uuid.uuid4()
    app.dispatch(OpenAccount(account, "Ada"))
    schedules = ScheduledCommands(event_store, accounts)
    due = datetime.now(UTC) + timedelta(seconds=0.5)
    schedules.schedule_batch(
        [ScheduleOnce(f"deposit-{i}", Deposit(account, Decimal("1.00")), due) for i in range(60)]
    )
    schedules.schedule_once("cancelled", Deposit(account, Decimal("1000.00")), due)
    assert schedules.cancel("cancelled") is True
    assert schedules.cancel("cancelled") is False
    assert len(schedules.pending(limit=1000)) == 60
    for scheduler in schedulers:
        scheduler.start()
    eventually(lambda: not schedules.pending(), 30, "every schedule fired")
    fired = _deposits(event_store, account)
    assert len(fired) == 60, "each schedule fired exactly once"
    by_schedule = collections.Counter(MAPPER.from_recorded(e)[1]["schedule_id"] for e in fired)
    assert set(by_schedule) == {f"deposit-{i}" for i in range(60)}
    assert set(by_schedule.values()) == {1}
    assert all(e.created_at >= due for e in fired), "none fired before its time"
    assert Decimal("1000.00") not in {MAPPER.event_of(e).amount for e in fired}


def test_a_failing_scheduled_command_is_kept_with_its_error_and_tried_again_later(
    event_store: PostgresEventStore, schedulers: list[Scheduler]
) -> None:
    schedules = ScheduledCommands(event_store, accounts)
    never_opened = uuid.uuid4()
    schedules.schedule_once("doomed", Deposit(never_opened, Decimal("1.00")), datetime.now(UTC))
    first = schedulers[0]
    assert first.fire_due() == 1
    (kept,) = schedules.pending()
    assert kept.attempts == 1
    assert kept.last_error is not None
    assert "AccountNotOpen" in kept.last_error
    assert kept.due_at > datetime.now(UTC), "tried again after a backoff, not at once"
    assert first.fire_due() == 0


def test_only_routed_commands_can_be_scheduled_and_times_must_be_aware(
    event_store: PostgresEventStore,
) -> None:
    schedules = ScheduledCommands(event_store, accounts)
    with pytest.raises(UnknownScheduledCommand, match="not routed"):
        schedules.schedule_once("x", AccountClosed(uuid.uuid4(), datetime.now(UTC).date()), datetime.now(UTC))
    with pytest.raises(ValueError, match="timezone-aware"):
        schedules.schedule_once("y", Deposit(uuid.uuid4(), Decimal(1)), datetime.now())
    assert schedules.pending() == []


def test_a_process_manager_schedules_and_cancels_in_its_events_transaction(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, schedulers: list[Scheduler]
) -> None:
    app = Application(event_store, MAPPER, accounts)
    with stack(event_store, kafka_namespace, partitions=2, mapper=MAPPER, router=accounts) as s:

        class Reminders(ProcessManager):
            name = s.name("reminders")

            def interested(self, event: Any) -> Any:
                if isinstance(event, AccountOpened):
                    return Start(event.account_id)
                if isinstance(event, AccountClosed):
                    return Continue(event.account_id)
                return None

            def handle(self, state: Any, event: Any) -> Any:
                key = f"welcome-{event.account_id}"
                if isinstance(event, AccountOpened):
                    due = datetime.now(UTC) + timedelta(seconds=2)
                    return ScheduleOnce(key, Deposit(event.account_id, Decimal("5.00")), due)
                return CancelSchedule(key)

        kept, closed = uuid.uuid4(), uuid.uuid4()
        for account in (kept, closed):
            app.dispatch(OpenAccount(account, "Ada"))
        app.dispatch(CloseAccount(closed))
        s.run(Reminders)
        schedules = ScheduledCommands(event_store, accounts)
        eventually(
            lambda: [p.schedule_id for p in schedules.pending()] == [f"welcome-{kept}"],
            what="one schedule written, the other cancelled",
        )
        for scheduler in schedulers:
            scheduler.start()
        eventually(lambda: len(_deposits(event_store, kept)) == 1, 30, "the welcome deposit fired")
        (deposit,) = _deposits(event_store, kept)
        (opening,) = event_store.read_stream_forward(f"account-{kept}", 1, 1)
        assert deposit.causation_id == opening.event_id, "caused by the event that scheduled it"
        assert _deposits(event_store, closed) == []


def test_two_worker_processes_fire_each_schedule_once(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    app = Application(event_store, MAPPER, bank)
    account = uuid.uuid4()
    app.dispatch(OpenAccount(account, "Ada"))
    schedules = ScheduledCommands(event_store, bank)
    due = datetime.now(UTC) + timedelta(seconds=3)  # after both workers are up
    schedules.schedule_batch(
        [ScheduleOnce(f"deposit-{i}", Deposit(account, Decimal("1.00")), due) for i in range(40)]
    )
    schedules.schedule_once("cancelled", Deposit(account, Decimal("500.00")), due)
    schedules.cancel("cancelled")
    with stack(event_store, kafka_namespace, partitions=2, mapper=MAPPER, router=bank) as s:
        env = worker_env(postgres_schema, kafka_namespace, s.app_name)
        args = ["tests.workers.process_apps:build_bank", "--partitions", "2"]
        with (
            WorkerProcess(args, env, tmp_path / "a.log") as a,
            WorkerProcess(args, env, tmp_path / "b.log") as b,
        ):
            eventually(lambda: a.ready() and b.ready(), what="two workers ready")
            eventually(lambda: not schedules.pending(), 60, "every schedule fired")
            # Leaving a group mid-rebalance keeps the broker waiting for the member: stop once it is stable.
            eventually(lambda: assigned(a) and assigned(b), what="both workers in the group")
            assert a.terminate() == 0
            assert b.terminate() == 0
    fired = _deposits(event_store, account)
    by_schedule = collections.Counter(MAPPER.from_recorded(e)[1]["schedule_id"] for e in fired)
    assert by_schedule == collections.Counter({f"deposit-{i}": 1 for i in range(40)})
    fired_by = {line.get("schedule_id") for w in (a, b) for line in w.lines() if "schedule_id" in line}
    assert len(fired_by) == 40
