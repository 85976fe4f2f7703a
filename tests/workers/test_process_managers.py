"""Process managers on the real PostgreSQL and Kafka: routing, state per instance, commands dispatched in
the event's transaction (exactly once), causation, strict routing errors and command-failure answers."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from psycopg import sql

from eventstore import PostgresEventStore
from examples.bank.accounts import CloseAccount, Deposit, OpenAccount, Withdraw, accounts
from examples.bank.events import AccountClosed, AccountOpened, MoneyDeposited
from tests.tidings.test_dispatch import MAPPER
from tests.workers.worker_support import eventually, stack
from tidings import Application
from tidings.pytest_plugin import KafkaNamespace
from workers import EventMetadata
from workers.failure import Retry, Skip
from workers.failure import Stop as StopAnswer
from workers.process_instances import ProcessInstances
from workers.process_manager import ProcessManager
from workers.process_routing import (
    Broadcast,
    Continue,
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
        app.dispatch(OpenAccount(account, "Ada"), metadata={"user": "teller-7"})
    return opened


def _stack(store: PostgresEventStore, namespace: KafkaNamespace, partitions: int = 2) -> Any:
    return stack(store, namespace, partitions=partitions, mapper=MAPPER, router=accounts)


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
            assert MAPPER.from_recorded(deposit)[1]["user"] == "teller-7", "and the user's metadata"
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


def test_fan_out_and_broadcast_reach_every_named_and_every_live_instance(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    app = Application(event_store, MAPPER, accounts)
    # One partition: the broadcast must come after both openings (across partitions only each stream's
    # events are in order, and an instance started later would not be live when the broadcast came).
    with _stack(event_store, kafka_namespace, partitions=1) as s:

        class Watch(ProcessManager):
            name = s.name("watch")

            def interested(self, event: Any, metadata: EventMetadata) -> Any:
                if isinstance(event, AccountOpened):
                    return Start([event.account_id, f"owner-{event.owner}"])  # fan-out
                if isinstance(event, AccountClosed):
                    return Broadcast()
                return None

            def apply(self, state: dict[str, Any], event: Any) -> dict[str, Any]:
                return {**state, type(event).__name__: state.get(type(event).__name__, 0) + 1}

        first, second = uuid.uuid4(), uuid.uuid4()
        app.dispatch(OpenAccount(first, "ada"))
        app.dispatch(OpenAccount(second, "ada"))
        app.dispatch(CloseAccount(first))
        s.run(Watch)
        instances = ProcessInstances(event_store)
        ids = [str(first), str(second), "owner-ada"]
        eventually(
            lambda: all((i := instances.get(Watch.name, p)) and "AccountClosed" in i.state for p in ids),
            what="the broadcast reached every instance",
        )
        assert instances.get(Watch.name, "owner-ada").state == {"AccountOpened": 2, "AccountClosed": 1}  # type: ignore[union-attr]
        assert instances.get(Watch.name, str(second)).state == {"AccountOpened": 1, "AccountClosed": 1}  # type: ignore[union-attr]
        assert instances.count(Watch.name) == 3


def test_event_failures_retry_with_context_and_delay_and_stop_stops_the_process_manager(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    app = Application(event_store, MAPPER, accounts)
    seen: list[tuple[int, dict[str, Any], float]] = []
    with _stack(event_store, kafka_namespace) as s:

        class Flaky(ProcessManager):
            name = s.name("flaky")

            def interested(self, event: Any, metadata: EventMetadata) -> Any:
                return Start(event.account_id) if isinstance(event, AccountOpened) else None

            def handle(self, state: Any, event: Any) -> Any:
                if event.owner == "stop":
                    raise RuntimeError("beyond repair")
                if len(seen) < 3:
                    raise RuntimeError("not yet")
                return None

            def error(self, error: BaseException, failed: Any, context: Any) -> Any:
                seen.append((context.attempt, dict(context.context), time.monotonic()))
                if str(error) == "beyond repair":
                    return StopAnswer("gave up")
                return Retry(delay=0.3, context={"tries": context.attempt})

        (account,) = [uuid.uuid4()]
        app.dispatch(OpenAccount(account, "ada"))
        runner = s.run(Flaky)
        instances = ProcessInstances(event_store)
        eventually(lambda: instances.count(Flaky.name) == 1, what="handled on the fourth attempt")
        assert [(a, c) for a, c, _ in seen] == [(1, {}), (2, {"tries": 1}), (3, {"tries": 2})]
        assert seen[2][2] - seen[1][2] >= 0.3, "Retry(delay) waited"
        app.dispatch(OpenAccount(uuid.uuid4(), "stop"))
        eventually(lambda: runner.status.state == "stopped", what="Stop stopped the process manager")
        assert "gave up" in runner.status.reason
        assert instances.count(Flaky.name) == 1, "nothing of the stopping event committed"


def test_a_command_retried_then_discarded_and_a_command_stop(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    app = Application(event_store, MAPPER, accounts)
    attempts: list[int] = []
    with _stack(event_store, kafka_namespace) as s:

        class Overdraws(ProcessManager):
            name = s.name("overdraws")

            def interested(self, event: Any, metadata: EventMetadata) -> Any:
                return Start(event.account_id) if isinstance(event, AccountOpened) else None

            def handle(self, state: Any, event: Any) -> Any:
                return Withdraw(event.account_id, Decimal("1.00"))  # always refused: a new account is empty

            def error(self, error: BaseException, failed: Any, context: Any) -> Any:
                if not isinstance(failed, Withdraw):
                    return super().error(error, failed, context)
                attempts.append(context.attempt)
                if context.state.get("owner") == "stop" or failed.account_id == stopper:
                    return StopAnswer("cannot overdraw")
                return Retry(context={"n": context.attempt}) if context.attempt < 3 else DiscardPending()

        quiet, stopper = uuid.uuid4(), uuid.uuid4()
        app.dispatch(OpenAccount(quiet, "ada"))
        runner = s.run(Overdraws)
        instances = ProcessInstances(event_store)
        eventually(lambda: instances.count(Overdraws.name) == 1, what="the failing command discarded")
        assert attempts == [1, 2, 3]
        app.dispatch(OpenAccount(stopper, "bob"))
        eventually(lambda: runner.status.state == "stopped", what="a command's Stop stops it")
        assert "cannot overdraw" in runner.status.reason


def test_an_instance_dropped_from_memory_after_idle_timeout_goes_on_from_postgresql(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    app = Application(event_store, MAPPER, accounts)
    managers: list[ProcessManager] = []
    with _stack(event_store, kafka_namespace) as s:

        class Counting(ProcessManager):
            name = s.name("counting")
            idle_timeout = 0.2
            state_type = Welcome

            def init(self) -> None:
                managers.append(self)

            def interested(self, event: Any, metadata: EventMetadata) -> Any:
                if isinstance(event, AccountOpened | MoneyDeposited):
                    return Continue(event.account_id)
                return None

            def apply(self, state: Welcome, event: Any) -> Welcome:
                return Welcome("counting", state.deposits + isinstance(event, MoneyDeposited))

        account = uuid.uuid4()
        app.dispatch(OpenAccount(account, "ada"))
        s.run(Counting)
        instances = ProcessInstances(event_store)
        eventually(lambda: instances.count(Counting.name) == 1, what="the instance started")
        eventually(lambda: not any(m.cached() for m in managers), what="dropped from memory when idle")
        app.dispatch(Deposit(account, Decimal("1.00")))
        app.dispatch(Deposit(account, Decimal("1.00")))
        eventually(
            lambda: (i := instances.get(Counting.name, str(account))) is not None and i.events_applied == 3,
            what="the next events applied to the state read back",
        )
        assert instances.get(Counting.name, str(account)).state == {"status": "counting", "deposits": 2}  # type: ignore[union-attr]


def test_an_event_over_event_timeout_is_rolled_back_and_answered_by_error(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    app = Application(event_store, MAPPER, accounts)
    errors: list[str] = []
    with _stack(event_store, kafka_namespace) as s:

        class Slow(ProcessManager):
            name = s.name("slow")
            event_timeout = 0.2

            def interested(self, event: Any, metadata: EventMetadata) -> Any:
                return Start(event.account_id) if isinstance(event, AccountOpened) else None

            def handle(self, state: Any, event: Any) -> Any:
                time.sleep(0.4)
                return Deposit(event.account_id, BONUS)

            def error(self, error: BaseException, failed: Any, context: Any) -> Any:
                errors.append(type(error).__name__)
                return Skip()

        account = uuid.uuid4()
        app.dispatch(OpenAccount(account, "ada"))
        runner = s.run(Slow)
        eventually(lambda: errors == ["EventTimeout"], what="the timeout answered by error")
        eventually(lambda: runner.status.state == "running", what="still running")
        assert _deposits(event_store, account) == [], "the deposit it dispatched was rolled back"
        assert ProcessInstances(event_store).count(Slow.name) == 0


@dataclass(frozen=True)
class NotifyBank:
    account_id: uuid.UUID
    note: str


def test_external_commands_go_to_the_outbox_in_the_events_transaction(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    app = Application(event_store, MAPPER, accounts)
    failed_once: list[bool] = []
    with _stack(event_store, kafka_namespace) as s:

        class Notifies(ProcessManager):
            name = s.name("notifies")
            external: ClassVar[Mapping[type, str]] = {NotifyBank: "partner-bank"}

            def interested(self, event: Any, metadata: EventMetadata) -> Any:
                return Start(event.account_id) if isinstance(event, AccountOpened) else None

            def handle(self, state: Any, event: Any) -> Any:
                return NotifyBank(event.account_id, f"welcome {event.owner}")

            def after_command(self, state: Any, command: object) -> bool:
                if not failed_once:
                    failed_once.append(True)
                    raise RuntimeError("fails after writing to the outbox, once")
                return True

        account = uuid.uuid4()
        app.dispatch(OpenAccount(account, "ada"))
        s.run(Notifies)
        eventually(lambda: ProcessInstances(event_store).count(Notifies.name) == 1, what="handled")
    with event_store.connection() as conn:
        rows = conn.execute(
            sql.SQL("SELECT destination, command_type, command, causation_id, sent_at FROM {}").format(
                sql.Identifier(event_store.config.schema, "command_outbox")
            )
        ).fetchall()
    (opening,) = event_store.read_stream_forward(f"account-{account}")
    assert rows == [
        (
            "partner-bank",
            f"{NotifyBank.__module__}.NotifyBank",
            {"account_id": str(account), "note": "welcome ada"},
            opening.event_id,
            None,
        )
    ], "one row: the first attempt's was rolled back with it"


def test_a_process_manager_cannot_be_reset_into_dispatching_its_commands_again(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    from eventstore.errors import ConfigurationError
    from workers.reset import reset_handler

    with _stack(event_store, kafka_namespace) as s:

        class Resettable(ProcessManager):
            name = s.name("resettable")

        with pytest.raises(ConfigurationError, match="would dispatch its commands again"):
            reset_handler(s.app(Resettable), s.config, Resettable.name)
