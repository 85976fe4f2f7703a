"""Options given at start and the application in the metadata, on the real PostgreSQL and Kafka.

A worker started with ``--set NAME.start_from=current`` on a topic with history handles only the events
appended after it first started; given a different start_from later, the handler refuses to run and
says how to apply it, and doing so (reset, then start) applies it. Handlers, projections and process
managers see their application's name.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from eventstore import PostgresEventStore
from examples.bank.accounts import OpenAccount, accounts
from examples.bank.events import AccountOpened
from tests.tidings.test_dispatch import MAPPER
from tests.workers import start_apps
from tests.workers.cli_support import WorkerProcess, tidings, worker_env
from tests.workers.worker_support import append_noted, eventually, stack
from tidings import Application
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema
from workers import EventHandler, EventMetadata, ProcessManager, Projection

APP = "tests.workers.start_apps:build"


def test_a_worker_given_start_from_current_handles_only_new_events_and_they_carry_the_application(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    url, schema = postgres_schema.server_url, postgres_schema.name
    start_apps.create_table(url, schema)
    name = kafka_namespace.group("seen")
    with stack(event_store, kafka_namespace, partitions=2) as s:
        env = worker_env(postgres_schema, kafka_namespace, s.app_name)
        history = append_noted(event_store, streams=3, per_stream=2, prefix="old")
        eventually(lambda: event_store.last_event_number() >= len(history), what="history numbered")
        eventually(lambda: s.relay.last_published >= len(history), what="history published to Kafka")

        given = [APP, "--set", f"{name}.start_from=current"]
        with WorkerProcess(given, env, tmp_path / "first.log") as worker:
            eventually(worker.ready, timeout=60, what="the worker ready")
            new = append_noted(event_store, streams=3, per_stream=2, prefix="new")
            eventually(
                lambda: len(start_apps.seen(url, schema)) >= len(new), timeout=60, what="new events handled"
            )
            assert worker.terminate() == 0
        rows = start_apps.seen(url, schema)
        assert [number for number, _, _ in rows] == list(range(len(history) + 1, len(history) + len(new) + 1))
        assert {(application, handler) for _, application, handler in rows} == {(s.app_name, name)}

        # Given the same option again (every restart of a deployment is): it goes on where it was.
        with WorkerProcess(given, env, tmp_path / "again.log") as worker:
            eventually(worker.ready, timeout=60, what="the worker ready again")
            more = append_noted(event_store, streams=1, per_stream=2, prefix="more")
            eventually(
                lambda: len(start_apps.seen(url, schema)) >= len(new) + len(more),
                timeout=60,
                what="later events handled",
            )
            assert worker.terminate() == 0

        # A different start_from given at start is not silently ignored: the handler does not run.
        other = [APP, "--set", f"{name}.start_from=origin"]
        with WorkerProcess(other, env, tmp_path / "other.log") as worker:

            def failed() -> bool:
                status, document = worker.readiness()
                return status == 503 and document["handlers"][0]["state"] == "failed"

            eventually(failed, timeout=60, what="the handler failed at start")
            reason = worker.readiness()[1]["handlers"][0]["reason"]
            assert "given start_from=origin at start" in reason
            assert "its first start fixed start_from=current" in reason
            assert f"tidings reset {name} --app APP" in reason
            assert f"drop --set {name}.start_from" in reason
            assert worker.terminate() == 0
        assert len(start_apps.seen(url, schema)) == len(new) + len(more)  # the history still not handled

        # Doing what the message says applies it: reset (given the same --set), then start with it.
        reset = tidings(
            "reset", name, "--app", APP, "--set", f"{name}.start_from=origin", "--yes", "--json", env=env
        )
        assert reset.returncode == 0, reset.stderr
        assert json.loads(reset.stdout)["start_from"] == "origin"
        with WorkerProcess(other, env, tmp_path / "reset.log") as worker:
            total = len(history) + len(new) + len(more)
            eventually(
                lambda: len(start_apps.seen(url, schema)) >= total, timeout=60, what="the history handled"
            )
            assert worker.ready()
            assert worker.terminate() == 0
        assert [number for number, _, _ in start_apps.seen(url, schema)] == list(range(1, total + 1))


def test_handlers_projections_and_process_managers_see_their_applications_name(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    seen: dict[str, set[str]] = {}
    lock = threading.Lock()

    def note(kind: str, metadata: EventMetadata) -> None:
        with lock:
            seen.setdefault(kind, set()).add(metadata.application)

    with stack(event_store, kafka_namespace, partitions=2, mapper=MAPPER, router=accounts) as s:

        class Handler(EventHandler):
            name = s.name("handler")

            def handle(self, event: Any, metadata: EventMetadata) -> None:
                note("handler", metadata)

        class View(Projection):
            name = s.name("view")

            def project(self, event: Any, metadata: EventMetadata, connection: sa.Connection) -> None:
                note("projection", metadata)

        class Manager(ProcessManager):
            name = s.name("manager")

            def interested(self, event: Any, metadata: EventMetadata) -> None:
                if isinstance(event, AccountOpened):
                    note("process manager", metadata)

        for handler in (Handler, View, Manager):
            s.run(handler)
        app = Application(event_store, MAPPER, accounts)
        app.dispatch(OpenAccount(uuid.uuid4(), "Ada"))
        eventually(lambda: len(seen) == 3, timeout=60, what="each kind saw the event")
    assert seen == {kind: {s.app_name} for kind in ("handler", "projection", "process manager")}
