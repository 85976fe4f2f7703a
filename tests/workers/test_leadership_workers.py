"""The workers' leaderships (global order, repartitioning relays) on the real services: a leader holds
the lock on its own session, a lost lock means standing by, and the lock is taken through the store's
``leader_url`` (a session-mode URL, for when the store's goes through a transaction-mode PgBouncer)."""

from __future__ import annotations

import threading
from pathlib import Path

from eventstore import PostgresEventStore, StoreConfig
from tests.eventstore.leadership_support import holders, login_role, role_url, terminate_holders
from tests.workers.cli_support import WorkerProcess, worker_env
from tests.workers.process_apps import create_tables
from tests.workers.worker_support import Noted, append_noted, eventually, stack
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema
from workers.delivery import EventMetadata
from workers.handler import EventHandler
from workers.runner import HandlerRunner
from workers.status import collect_status


def lock_of(schema: str, handler: str) -> str:
    return f"tidings-handler.{schema}.{handler}"


def the_active(url: str, lock: str, runners: list[HandlerRunner]) -> HandlerRunner | None:
    """The one runner that says it leads with the lock held on its own session (None while not so)."""
    leading = [r for r in runners if r.status.leading]
    found = holders(url, lock)
    if len(leading) != 1 or len(found) != 1 or leading[0]._leadership is None:
        return None
    return leading[0] if found[0].pid == leading[0]._leadership.pid else None


def test_a_global_order_handler_whose_lock_session_ends_stands_by_and_one_leads_with_the_lock(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    url, schema = event_store.config.url, event_store.config.schema
    seen: list[int] = []
    lock = threading.Lock()
    with stack(event_store, kafka_namespace, partitions=3) as s:

        class Ledger(EventHandler):
            name = s.name("ledger")

            def handle(self, event: Noted, metadata: EventMetadata) -> None:
                with lock:
                    seen.append(metadata.event_number)

        first = append_noted(event_store, streams=3, per_stream=4)
        runners = [s.run(Ledger), s.run(Ledger)]
        name = lock_of(schema, Ledger.name)
        eventually(lambda: the_active(url, name, runners) is not None, what="a leader")
        eventually(lambda: len(set(seen)) >= len(first), what="handled before the cut")
        (ended,) = terminate_holders(url, name)

        def taken_over() -> bool:
            active = the_active(url, name, runners)
            return (
                active is not None and active._leadership is not None and active._leadership.pid != ended.pid
            )

        eventually(taken_over, what="one runner leads again, on a session that holds the lock")
        second = append_noted(event_store, streams=3, per_stream=4, prefix="after")
        total = len(first) + len(second)
        eventually(lambda: len(set(seen)) >= total, what="handled after the cut")
        assert taken_over()
    # At least once across the step-down (a plain handler), but in event_number order.
    assert sorted(set(seen)) == list(range(1, total + 1))
    first_seen = [n for i, n in enumerate(seen) if n not in seen[:i]]
    assert first_seen == sorted(first_seen)


def test_global_order_and_repartitioning_take_their_locks_through_the_leader_url(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema, kafka_namespace: KafkaNamespace
) -> None:
    url, schema = postgres_schema.server_url, postgres_schema.name
    seen: list[int] = []
    with login_role(url) as role:
        config = StoreConfig(url, schema, leader_url=role_url(url, role))
        with PostgresEventStore(config, sequencer=False) as store, stack(store, kafka_namespace) as s:

            class Ledger(EventHandler):
                name = s.name("ledger")

                def handle(self, event: Noted, metadata: EventMetadata) -> None:
                    seen.append(metadata.event_number)

            class ByGroup(EventHandler):
                name = s.name("by-group")
                concurrency = 2

                def partition_by(self, event: Noted, metadata: EventMetadata) -> str:
                    return event.group

                def handle(self, event: Noted, metadata: EventMetadata) -> None:
                    seen.append(-metadata.event_number)

            appended = append_noted(event_store, streams=2, per_stream=3, group="g")
            s.run(Ledger)
            s.run(ByGroup)
            eventually(lambda: len(seen) >= 2 * len(appended), what="both handlers handled everything")
            locks = {
                "global order": lock_of(schema, Ledger.name),
                "repartitioning relay": f"tidings-relay.{schema}.repartition.{ByGroup.name}",
                "relay": f"tidings-relay.{schema}.default",
            }
            users = {what: [h.user for h in holders(url, name)] for what, name in locks.items()}
            assert users == {what: [role] for what in locks}
            # Status reads the locks from pg_locks, whatever URL took them.
            status = collect_status(
                event_store, kafka_namespace.bootstrap_servers, {}, topics=[s.topic], handlers=[Ledger.name]
            )
            (ledger,) = status.handlers
            (holder,) = holders(url, locks["global order"])
            assert ledger.active is not None
            assert ledger.active.endswith(f" pid {holder.pid}")


def test_tidings_worker_takes_its_locks_through_tidings_leader_url(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    url, schema = postgres_schema.server_url, postgres_schema.name
    create_tables(url, schema)
    ledger = f"{kafka_namespace.prefix}ledger"
    with login_role(url) as role, stack(event_store, kafka_namespace, partitions=2) as s:
        env = worker_env(postgres_schema, kafka_namespace, s.app_name, TIDINGS_LEADER_URL=role_url(url, role))
        with WorkerProcess(
            ["tests.workers.process_apps:build", "--handler", ledger], env, tmp_path / "w.log"
        ) as w:
            eventually(w.ready, what="the worker ready")
            eventually(lambda: len(holders(url, lock_of(schema, ledger))) == 1, what="the handler leads")
            assert [h.user for h in holders(url, lock_of(schema, ledger))] == [role]
            assert w.terminate() == 0
