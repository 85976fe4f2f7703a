"""Attacks on process managers under concurrency and failure (issue 20, cases 5, 6, 7 and 9c), on the real
PostgreSQL and Kafka: two events starting one instance at once, error answers for a failed command
given by an ``error`` that does not delegate to ``super()``, a retry delay that must not hold the
event's transaction (and with it the cluster's numbering horizon) open, and a state mutated in place by
``apply`` before a rollback."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
import sqlalchemy as sa

from eventstore import PostgresEventStore
from eventstore.partitioner import KeyPartitioner
from examples.bank.accounts import Deposit, InsufficientFunds, OpenAccount, Withdraw, accounts
from examples.bank.events import AccountOpened, MoneyDeposited
from tests.tidings.test_dispatch import MAPPER
from tests.workers.cli_support import tidings, worker_env
from tests.workers.worker_support import Stack, eventually, stack
from tidings import Application
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema
from workers import EventMetadata
from workers.failure import Park, Retry, Skip
from workers.failure import Stop as StopAnswer
from workers.parking import ParkedEvents
from workers.process_instances import ProcessInstances
from workers.process_manager import ProcessFailureContext, ProcessManager
from workers.process_routing import Continue, DiscardPending, Start, StartStrict


@contextmanager
def _stack(store: PostgresEventStore, namespace: KafkaNamespace, partitions: int = 2) -> Iterator[Stack]:
    with stack(store, namespace, partitions=partitions, mapper=MAPPER, router=accounts) as s:
        yield s


def _deposits(store: PostgresEventStore, account: uuid.UUID) -> list[Decimal]:
    return [
        MAPPER.event_of(e).amount
        for e in store.read_stream_forward(f"account-{account}")
        if e.event_type.endswith("MoneyDeposited")
    ]


# --- case 5: two events start one instance at once ----------------------------------------------------


def _partition(account: uuid.UUID) -> int:
    """Which of two partitions the relay puts an account's events on."""
    return KeyPartitioner().partition(f"account-{account}".encode(), 2)


def _two_accounts_on_two_partitions() -> tuple[uuid.UUID, uuid.UUID]:
    first = uuid.uuid4()
    while _partition(second := uuid.uuid4()) == _partition(first):
        pass
    return first, second


def _another_on_the_partition_of(account: uuid.UUID) -> uuid.UUID:
    while _partition(other := uuid.uuid4()) != _partition(account):
        pass
    return other


class Rendezvous:
    """Holds the first event to reach ``handle`` inside its transaction until the second event is inside
    its own too: it reached ``handle`` as well, or its backend waits on a lock the first one holds."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.arrived = 0
        self.lock = threading.Lock()
        self.partitions: set[int] = set()

    def came(self, partition: int) -> None:
        with self.lock:
            self.partitions.add(partition)

    def meet(self, backend_pid: int) -> None:
        with self.lock:
            self.arrived += 1
            first = self.arrived == 1
        if not first:
            return
        deadline = time.monotonic() + 30
        with psycopg.connect(self.url, autocommit=True) as conn:
            while self.arrived < 2:
                blocked = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                    (backend_pid,),
                ).fetchone()
                if blocked and blocked[0] > 0:
                    return
                assert time.monotonic() < deadline, "the second event never came while the first was held"
                time.sleep(0.02)


class _Racing(ProcessManager):
    """Both openings of the test reach one instance, ``owner-<owner>``; ``handle`` of the first holds
    its transaction open until the second one is inside its own."""

    concurrency = 2
    rendezvous: Rendezvous

    def project(self, event: Any, metadata: EventMetadata, connection: sa.Connection) -> None:
        self._pid = connection.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
        self.rendezvous.came(metadata.partition)
        super().project(event, metadata, connection)

    def handle(self, state: Any, event: Any) -> Any:
        self.rendezvous.meet(self._pid)
        return None


def test_two_strict_starts_of_one_instance_at_once_one_starts_the_other_is_already_started(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema, kafka_namespace: KafkaNamespace
) -> None:
    app = Application(event_store, MAPPER, accounts)
    errors: list[tuple[str, str]] = []
    rendezvous = Rendezvous(postgres_schema.server_url)
    with _stack(event_store, kafka_namespace) as s:

        class Strict(_Racing):
            name = s.name("strict")

            def interested(self, event: Any, metadata: EventMetadata) -> Any:
                return StartStrict(f"owner-{event.owner}") if isinstance(event, AccountOpened) else None

            def apply(self, state: dict[str, Any], event: Any) -> dict[str, Any]:
                return {"opened_by": str(event.account_id)}

            def error(self, error: BaseException, failed: Any, context: Any) -> Any:
                errors.append((type(error).__name__, str(failed.account_id)))
                return Skip()

        Strict.rendezvous = rendezvous
        first, second = _two_accounts_on_two_partitions()
        app.dispatch(OpenAccount(first, "ada"))
        app.dispatch(OpenAccount(second, "ada"))
        s.run(Strict)
        eventually(lambda: len(errors) >= 1, timeout=60, what="one strict start refused")
        assert rendezvous.partitions == {0, 1}, "the two openings came on two partitions"
        instance = ProcessInstances(event_store).get(Strict.name, "owner-ada")
        assert instance is not None
        assert instance.events_applied == 1
        (refused,) = errors
        assert refused[0] == "ProcessAlreadyStarted"
        assert {refused[1], instance.state["opened_by"]} == {str(first), str(second)}


def test_two_lenient_starts_of_one_instance_at_once_both_apply_on_one_state(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema, kafka_namespace: KafkaNamespace
) -> None:
    app = Application(event_store, MAPPER, accounts)
    rendezvous = Rendezvous(postgres_schema.server_url)
    with _stack(event_store, kafka_namespace) as s:

        class Lenient(_Racing):
            name = s.name("lenient")

            def interested(self, event: Any, metadata: EventMetadata) -> Any:
                return Start(f"owner-{event.owner}") if isinstance(event, AccountOpened) else None

            def apply(self, state: dict[str, Any], event: Any) -> dict[str, Any]:
                return {"accounts": [*state.get("accounts", []), str(event.account_id)]}

        Lenient.rendezvous = rendezvous
        first, second = _two_accounts_on_two_partitions()
        app.dispatch(OpenAccount(first, "ada"))
        app.dispatch(OpenAccount(second, "ada"))
        s.run(Lenient)
        instances = ProcessInstances(event_store)
        eventually(lambda: rendezvous.arrived >= 2, timeout=60, what="both openings handled")
        assert rendezvous.partitions == {0, 1}, "the two openings came on two partitions"
        eventually(
            lambda: (i := instances.get(Lenient.name, "owner-ada")) is not None and i.events_applied >= 2,
            timeout=10,
            what="both openings applied to the one instance (one was lost)",
        )
        instance = instances.get(Lenient.name, "owner-ada")
        assert instance is not None
        assert instance.events_applied == 2
        assert sorted(instance.state["accounts"]) == sorted([str(first), str(second)])


# --- case 6: error answers for a failed command mean what they say --------------------------------------


def test_commandeds_error_example_dispatches_the_command_three_times_then_stops(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    app = Application(event_store, MAPPER, accounts)
    calls: list[tuple[str, str, int, dict[str, Any]]] = []
    with _stack(event_store, kafka_namespace) as s:

        class Example(ProcessManager):
            """Commanded's error/3 example, translated: it never delegates to ``super().error``."""

            name = s.name("example")

            def interested(self, event: Any, metadata: EventMetadata) -> Any:
                return Start(event.account_id) if isinstance(event, AccountOpened) else None

            def handle(self, state: Any, event: Any) -> Any:
                return Withdraw(event.account_id, Decimal("1000.00"))  # a new account is empty

            def error(self, error: BaseException, failed: Any, context: Any) -> Any:
                attempt = getattr(context, "attempt", 0)
                calls.append((type(error).__name__, type(failed).__name__, attempt, dict(context.context)))
                failures = context.context.get("failures", 0)
                if failures >= 2:  # stop after three failures
                    return StopAnswer("too_many_failures")
                return Retry(context={**context.context, "failures": failures + 1})

        account = uuid.uuid4()
        app.dispatch(OpenAccount(account, "ada"))
        runner = s.run(Example)
        eventually(lambda: runner.status.state == "stopped", what="the process manager stopped")
        assert "too_many_failures" in runner.status.reason
        assert calls == [
            ("InsufficientFunds", "Withdraw", 1, {}),
            ("InsufficientFunds", "Withdraw", 2, {"failures": 1}),
            ("InsufficientFunds", "Withdraw", 3, {"failures": 2}),
        ], "the command was dispatched exactly three times, and error() saw only its failures"
        assert ProcessInstances(event_store).count(Example.name) == 0, "nothing of the event committed"


def test_park_for_a_failed_command_parks_the_event_and_nothing_it_caused_commits(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema, kafka_namespace: KafkaNamespace
) -> None:
    app = Application(event_store, MAPPER, accounts)
    asked: list[tuple[str, str]] = []
    with _stack(event_store, kafka_namespace) as s:

        class Parks(ProcessManager):
            name = s.name("parks")

            def interested(self, event: Any, metadata: EventMetadata) -> Any:
                return Start(event.account_id) if isinstance(event, AccountOpened) else None

            def handle(self, state: Any, event: Any) -> Any:
                if event.owner == "ada":  # a deposit, then a withdrawal that is refused
                    return [Deposit(event.account_id, Decimal("1.00")), Withdraw(event.account_id, BIG)]
                return Deposit(event.account_id, Decimal("1.00"))

            def error(self, error: BaseException, failed: Any, context: Any) -> Any:
                asked.append((type(error).__name__, type(failed).__name__))
                if isinstance(failed, Withdraw):
                    return Park("cannot overdraw")
                return Skip()  # any other failure: skip (it never delegates to super)

        ada, bob = uuid.uuid4(), uuid.uuid4()
        app.dispatch(OpenAccount(ada, "ada"))
        app.dispatch(OpenAccount(bob, "bob"))
        s.run(Parks)
        instances = ProcessInstances(event_store)
        eventually(lambda: instances.count(Parks.name) == 1, what="bob's opening handled")
        eventually(lambda: ParkedEvents(event_store).count(Parks.name) == 1, what="ada's opening parked")
        env = worker_env(postgres_schema, kafka_namespace, s.app_name)
        done = tidings("parked", "list", "--handler", Parks.name, "--json", env=env)
        assert done.returncode == 0, done.stderr
        (parked,) = json.loads(done.stdout)
        assert parked["stream_id"] == f"account-{ada}"
        assert "cannot overdraw" in parked["error"]
        assert asked == [("InsufficientFunds", "Withdraw")], "error() was asked once, about the command"
        assert instances.get(Parks.name, str(ada)) is None, "the instance's state did not commit"
        assert _deposits(event_store, ada) == [], "the deposit dispatched before the failure rolled back"
        assert _deposits(event_store, bob) == [Decimal("1.00")]


BIG = Decimal("1000.00")


# --- case 7: a retry's delay is waited outside the event's transaction -----------------------------------


def _numbering_latency(app: Application, store: PostgresEventStore) -> float:
    """Seconds from an append's commit until its event has its event_number."""
    account = uuid.uuid4()
    app.dispatch(OpenAccount(account, "bystander"))
    started = time.monotonic()
    eventually(
        lambda: store.read_stream_forward(f"account-{account}")[0].event_number is not None,
        timeout=30,
        what="the bystander's event numbered",
    )
    return time.monotonic() - started


def test_a_command_retry_delay_does_not_hold_the_numbering_horizon_and_keeps_attempt_and_context(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    app = Application(event_store, MAPPER, accounts)
    seen: list[tuple[int, dict[str, Any]]] = []
    waiting = threading.Event()
    with _stack(event_store, kafka_namespace) as s:

        class Patient(ProcessManager):
            name = s.name("patient")

            def interested(self, event: Any, metadata: EventMetadata) -> Any:
                if isinstance(event, AccountOpened) and event.owner == "ada":
                    return Start(event.account_id)
                return None

            def handle(self, state: Any, event: Any) -> Any:
                # The deposit gives the event's transaction a transaction id: while it is open, the
                # sequencer can number nothing committed after it.
                return [Deposit(event.account_id, Decimal("1.00")), Withdraw(event.account_id, BIG)]

            def error(self, error: BaseException, failed: Any, context: Any) -> Any:
                assert isinstance(context, ProcessFailureContext)
                assert isinstance(error, InsufficientFunds)
                seen.append((context.attempt, dict(context.context)))
                if context.attempt == 1:
                    waiting.set()
                    return Retry(delay=3.0, context={"first": "refused"})
                return DiscardPending()

        normal = max(_numbering_latency(app, event_store) for _ in range(3))
        account = uuid.uuid4()
        app.dispatch(OpenAccount(account, "ada"))
        s.run(Patient)
        eventually(waiting.is_set, what="the first attempt failed and a retry in 3 s was answered")
        during = _numbering_latency(app, event_store)
        retried = len(seen)
        print(f"numbering latency: normal <= {normal:.3f} s, during the retry's wait {during:.3f} s")
        assert retried == 1, (
            f"the bystander's event was numbered only after the retry ({during:.2f} s, normally "
            f"<= {normal:.2f} s): the retry's wait held the event's transaction open"
        )
        instances = ProcessInstances(event_store)
        eventually(lambda: instances.count(Patient.name) == 1, what="the retried event handled")
        assert seen == [(1, {}), (2, {"first": "refused"})], "attempt and context survived the rollback"
        assert _deposits(event_store, account) == [Decimal("1.00")], "the deposit committed once"


def test_a_retry_wait_holds_no_lock_and_an_instance_changed_meanwhile_is_handled_afresh(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    app = Application(event_store, MAPPER, accounts)
    handled: list[tuple[str, list[str]]] = []
    asked: list[int] = []
    waiting = threading.Event()
    first, waiter = _two_accounts_on_two_partitions()
    late = _another_on_the_partition_of(first)  # not the waiter's: it does not queue behind it
    with _stack(event_store, kafka_namespace) as s:

        class Owners(ProcessManager):
            name = s.name("owners")
            concurrency = 2

            def interested(self, event: Any, metadata: EventMetadata) -> Any:
                return Continue(f"owner-{event.owner}") if isinstance(event, AccountOpened) else None

            def handle(self, state: dict[str, Any], event: Any) -> Any:
                handled.append((str(event.account_id), list(state.get("opened", []))))
                return Withdraw(event.account_id, BIG) if event.account_id == waiter else None

            def apply(self, state: dict[str, Any], event: Any) -> dict[str, Any]:
                return {"opened": [*state.get("opened", []), str(event.account_id)]}

            def error(self, error: BaseException, failed: Any, context: Any) -> Any:
                asked.append(context.attempt)
                if len(asked) == 1:
                    waiting.set()
                    return Retry(delay=4.0)
                return DiscardPending()

        instances = ProcessInstances(event_store)

        def opened() -> list[str]:
            instance = instances.get(Owners.name, "owner-ada")
            return list(instance.state["opened"]) if instance is not None else []

        app.dispatch(OpenAccount(first, "ada"))
        s.run(Owners)
        eventually(lambda: opened() == [str(first)], what="the instance started")
        app.dispatch(OpenAccount(waiter, "ada"))
        eventually(waiting.is_set, what="the waiter's withdrawal refused, a retry in 4 s answered")
        # An event of the same instance on the other partition: it goes on while the retry waits.
        app.dispatch(OpenAccount(late, "ada"))
        eventually(lambda: str(late) in opened(), timeout=30, what="the later opening applied")
        assert asked == [1], "applied while the retry waited: the wait held no lock on the instance"
        eventually(lambda: len(opened()) == 3, what="the waiter's opening applied after its retry")
        assert opened() == [str(first), str(late), str(waiter)]
        assert asked == [1, 1], "the instance changed meanwhile: the command's attempts count afresh"
        assert handled[-1] == (str(waiter), [str(first), str(late)]), "handled afresh on the new state"


def test_a_retry_wait_is_abandoned_when_the_worker_stops(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    app = Application(event_store, MAPPER, accounts)
    seen: list[int] = []
    with _stack(event_store, kafka_namespace) as s:

        class Stubborn(ProcessManager):
            name = s.name("stubborn")

            def interested(self, event: Any, metadata: EventMetadata) -> Any:
                return Start(event.account_id) if isinstance(event, AccountOpened) else None

            def handle(self, state: Any, event: Any) -> Any:
                return Withdraw(event.account_id, BIG)

            def error(self, error: BaseException, failed: Any, context: Any) -> Any:
                seen.append(context.attempt)
                return Retry(delay=600.0)

        app.dispatch(OpenAccount(uuid.uuid4(), "ada"))
        runner = s.run(Stubborn)
        eventually(lambda: seen == [1], what="a retry in 10 minutes answered")
        stopping = threading.Thread(target=runner.stop, kwargs={"timeout": 120.0})
        stopping.start()
        stopping.join(60.0)
        assert not stopping.is_alive(), "stop() waited for the retry's delay"
        assert seen == [1]
        assert ProcessInstances(event_store).count(Stubborn.name) == 0


# --- case 9c: a rollback never leaves a state changed in memory ---------------------------------------


@dataclass
class Tally:
    seen: list[str] = field(default_factory=list)


def test_a_state_mutated_in_place_is_not_applied_twice_after_a_rollback(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    app = Application(event_store, MAPPER, accounts)
    failed: list[object] = []
    with _stack(event_store, kafka_namespace, partitions=1) as s:

        class InPlace(ProcessManager):
            name = s.name("in-place")
            state_type = Tally

            def interested(self, event: Any, metadata: EventMetadata) -> Any:
                if isinstance(event, AccountOpened | MoneyDeposited) and event.account_id == account:
                    return Continue(event.account_id)
                return None

            def handle(self, state: Tally, event: Any) -> Any:
                if isinstance(event, AccountOpened):
                    return Deposit(event.account_id, Decimal("1.00"))
                return Withdraw(event.account_id, Decimal("0.50"))

            def apply(self, state: Tally, event: Any) -> Tally:
                state.seen.append(type(event).__name__)  # in place, as many people write it
                return state

            def after_command(self, state: Any, command: object) -> bool:
                if isinstance(command, Withdraw) and not failed:
                    failed.append(command)
                    raise RuntimeError("fails after apply, once: the event's transaction rolls back")
                return True

            def error(self, error: BaseException, failed_: Any, context: Any) -> Any:
                return Retry()

        account = uuid.uuid4()
        app.dispatch(OpenAccount(account, "ada"))
        s.run(InPlace)
        instances = ProcessInstances(event_store)
        eventually(
            lambda: (i := instances.get(InPlace.name, str(account))) is not None and i.events_applied == 2,
            what="the opening and its bonus deposit applied",
        )
        instance = instances.get(InPlace.name, str(account))
        assert failed, "the deposit's first attempt failed after apply"
        assert instance is not None
        assert instance.state == {"seen": ["AccountOpened", "MoneyDeposited"]}
