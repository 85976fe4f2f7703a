"""Process managers on the real PostgreSQL and Kafka: routing, state per instance, commands dispatched in
the event's transaction (exactly once), causation, strict routing errors and command-failure answers."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from eventstore import PostgresEventStore
from examples.bank.accounts import CloseAccount, Deposit, OpenAccount, Withdraw, accounts
from examples.bank.events import AccountClosed, AccountOpened, MoneyDeposited
from tests.tidings.test_dispatch import MAPPER
from tests.workers.worker_support import eventually, stack
from tidings import Application
from tidings.pytest_plugin import KafkaNamespace
from workers import EventMetadata
from workers.failure import Skip
from workers.process_instances import ProcessInstances
from workers.process_manager import ProcessManager
from workers.process_routing import (
    ContinuePending,
    ContinueStrict,
    ContinueWith,
    DiscardPending,
    Start,
    Stop,
)

BONUS = Decimal("10.00")


@dataclass
class Welcome:
    status: str = "new"
    deposits: int = 0


def _deposits(store: PostgresEventStore, account: uuid.UUID) -> list[Any]:
    return [
        e for e in store.read_stream_forward(f"account-{account}") if e.event_type.endswith("MoneyDeposited")
    ]


def _open(app: Application, n: int) -> list[uuid.UUID]:
    opened = [uuid.uuid4() for _ in range(n)]
    for account in opened:
        app.dispatch(OpenAccount(account, "Ada"))
    return opened


def _stack(store: PostgresEventStore, namespace: KafkaNamespace) -> Any:
    return stack(store, namespace, partitions=2, mapper=MAPPER, router=accounts)


def test_each_opened_account_gets_one_bonus_caused_by_its_opening_and_stop_deletes_the_state(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    app = Application(event_store, MAPPER, accounts)
    with _stack(event_store, kafka_namespace) as s:

        class Bonuses(ProcessManager):
            name = s.name("bonuses")
            state_type = Welcome
            concurrency = 2

            def interested(self, event: Any, metadata: EventMetadata) -> Any:
                match event:
                    case AccountOpened(account_id=account):
                        return Start(account)
                    case MoneyDeposited(account_id=account, transfer_id=None):
                        return ContinueStrict(account)
                    case AccountClosed(account_id=account):
                        return Stop(account)
                return None

            def handle(self, state: Welcome, event: Any) -> Any:
                if isinstance(event, AccountOpened):
                    return Deposit(event.account_id, BONUS)
                return None

            def apply(self, state: Welcome, event: Any) -> Welcome:
                if isinstance(event, AccountOpened):
                    return Welcome("bonus sent", 0)
                if isinstance(event, MoneyDeposited):
                    return Welcome(state.status, state.deposits + 1)
                return state

        opened = _open(app, 6)
        s.run(Bonuses)
        instances = ProcessInstances(event_store)
        eventually(
            lambda: all(
                (i := instances.get(Bonuses.name, str(a))) and i.state["deposits"] == 1 for a in opened
            ),
            what="every bonus deposited and seen by its instance",
        )
        for account in opened:
            (deposit,) = _deposits(event_store, account)
            (opening,) = event_store.read_stream_forward(f"account-{account}", 1, 1)
            assert deposit.causation_id == opening.event_id, "the command is caused by the event"
            assert deposit.correlation_id == opening.correlation_id, "and keeps its correlation"
            assert MAPPER.event_of(deposit).amount == BONUS
        instance = instances.get(Bonuses.name, str(opened[0]))
        assert instance is not None
        assert instance.state == {"status": "bonus sent", "deposits": 1}
        assert instance.events_applied == 2
        app.dispatch(CloseAccount(opened[0]))
        eventually(
            lambda: instances.get(Bonuses.name, str(opened[0])) is None, what="stopped instance deleted"
        )
        assert instances.count(Bonuses.name) == 5


def test_a_failure_after_dispatching_rolls_back_the_commands_events_with_it(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    app = Application(event_store, MAPPER, accounts)
    failures: list[str] = []
    lock = threading.Lock()
    with _stack(event_store, kafka_namespace) as s:

        class FailsOnce(ProcessManager):
            name = s.name("fails-once")
            max_attempts = 5

            def interested(self, event: Any) -> Any:
                return Start(event.account_id) if isinstance(event, AccountOpened) else None

            def handle(self, state: dict[str, Any], event: Any) -> Any:
                return Deposit(event.account_id, BONUS)

            def after_command(self, state: Any, command: object) -> bool:
                with lock:
                    key = str(getattr(command, "account_id", ""))
                    if key not in failures:
                        failures.append(key)
                        raise RuntimeError("the worker fails after the command's events were appended")
                return True

        opened = _open(app, 3)
        s.run(FailsOnce)
        instances = ProcessInstances(event_store)
        eventually(lambda: instances.count(FailsOnce.name) == 3, what="every instance saved")
        assert sorted(failures) == sorted(str(a) for a in opened), "each failed once"
        for account in opened:
            assert len(_deposits(event_store, account)) == 1, "the first attempt's deposit rolled back"


def test_strict_routing_errors_reach_error_and_skip_goes_on(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    app = Application(event_store, MAPPER, accounts)
    errors: list[str] = []
    with _stack(event_store, kafka_namespace) as s:

        class OnlyContinues(ProcessManager):
            name = s.name("only-continues")

            def interested(self, event: Any) -> Any:
                if isinstance(event, AccountOpened):
                    return ContinueStrict(event.account_id)  # nobody started it
                if isinstance(event, MoneyDeposited):
                    return Start(event.account_id)
                return None

            def error(self, error: BaseException, failed: Any, context: Any) -> Any:
                errors.append(type(error).__name__)
                return Skip()

        (account,) = _open(app, 1)
        app.dispatch(Deposit(account, Decimal("1.00")))
        s.run(OnlyContinues)
        instances = ProcessInstances(event_store)
        eventually(lambda: instances.count(OnlyContinues.name) == 1, what="the deposit started an instance")
        assert errors == ["ProcessNotStarted"]


def test_command_failure_answers_replace_drop_or_keep_the_pending_commands(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    app = Application(event_store, MAPPER, accounts)
    answers = {}
    with _stack(event_store, kafka_namespace) as s:

        class Withdraws(ProcessManager):
            name = s.name("withdraws")

            def interested(self, event: Any) -> Any:
                return Start(event.account_id) if isinstance(event, AccountOpened) else None

            def handle(self, state: Any, event: Any) -> Any:
                # The first command fails: nothing to withdraw from a new account.
                return [
                    Withdraw(event.account_id, Decimal("5.00")),
                    Deposit(event.account_id, Decimal("1.00")),
                ]

            def error(self, error: BaseException, failed: Any, context: Any) -> Any:
                assert isinstance(failed, Withdraw)
                assert [type(c) for c in context.pending_commands] == [Deposit]
                answer = answers[failed.account_id]
                if answer == "replace":
                    return ContinueWith([Deposit(failed.account_id, Decimal("7.00"))])
                return DiscardPending() if answer == "discard" else ContinuePending()

        replaced, discarded, kept = _open(app, 3)
        answers.update({replaced: "replace", discarded: "discard", kept: "keep"})
        s.run(Withdraws)
        instances = ProcessInstances(event_store)
        eventually(lambda: instances.count(Withdraws.name) == 3, what="every instance saved")

    def amounts(account: uuid.UUID) -> list[Decimal]:
        return [MAPPER.event_of(e).amount for e in _deposits(event_store, account)]

    assert amounts(replaced) == [Decimal("7.00")]
    assert amounts(discarded) == []
    assert amounts(kept) == [Decimal("1.00")]
    for account in (replaced, discarded, kept):
        withdrawn = [
            e for e in event_store.read_stream_forward(f"account-{account}") if "Withdrawn" in e.event_type
        ]
        assert withdrawn == [], "the failed withdrawal appended nothing"
