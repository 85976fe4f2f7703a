"""Attacks on `tidings reset` against a running global-order projection (issue 20, case 4).

A global-order handler joins no consumer group: its active consumer holds the advisory lock
``tidings-handler.<schema>.<name>`` and its standbys keep trying it. The reset must find them from that
truth, refuse while any of them runs, and hold the lock itself while it resets, so that a worker started
meanwhile waits instead of projecting into half-emptied tables.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql

from eventstore import PostgresEventStore
from eventstore.leadership import Leadership, contenders
from eventstore.routing import Routing
from tests.workers.cli_support import tidings, worker_env
from tests.workers.worker_support import Noted, append_noted, eventually, mapper, read, stack
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema
from workers.app import WorkerApp
from workers.delivery import EventMetadata
from workers.projection import Projection
from workers.reset import (
    HandlerRunning,
    ResetRaced,
    ResetReport,
    handler_lock_name,
    handler_presence,
    reset_handler,
)
from workers.status import collect_status, specs_of

APP = "tests.workers.test_attack_operator:build"

# before_reset of the ledger waits here while a test holds it (the reset then holds the handler's lock).
_hold_reset = threading.Event()
_in_reset = threading.Event()


@functools.cache
def _ledger_table(schema: str) -> sa.Table:
    return sa.Table(
        "ledger",
        sa.MetaData(schema=schema),
        sa.Column("event_number", sa.BigInteger, primary_key=True),
        sa.Column("stream_id", sa.Text, nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
    )


def ledger_app(app_name: str, prefix: str, schema: str, ordering: str = "global") -> WorkerApp:
    """One projection, ``<prefix>ledger``, writing each event into ``ledger`` (in global order, or per
    key over 2 lanes)."""
    table = _ledger_table(schema)
    in_order = ordering == "global"

    class Ledger(Projection):
        name = f"{prefix}ledger"
        tables = (table,)
        ordering = "global" if in_order else "per_key"
        concurrency = 1 if in_order else 2

        def project(self, event: Noted, metadata: EventMetadata, connection: sa.Connection) -> None:
            values = {"event_number": metadata.event_number, "stream_id": metadata.stream_id, "n": event.n}
            connection.execute(sa.insert(table).values(**values))  # not idempotent: a repeat fails

        def before_reset(self) -> None:
            _in_reset.set()
            while _hold_reset.is_set():
                _in_reset.wait(0.05)

    return WorkerApp(app_name, mapper=mapper, handlers=[Ledger], routing=Routing(f"{app_name}.events"))


def build() -> WorkerApp:
    """The ledger app as ``tidings reset --app`` loads it (settings from the environment)."""
    return ledger_app(
        os.environ["TIDINGS_TEST_APP_NAME"], os.environ["TIDINGS_TEST_PREFIX"], os.environ["TIDINGS_SCHEMA"]
    )


def _create_ledger(store: PostgresEventStore) -> None:
    with store.connection() as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (event_number bigint PRIMARY KEY, stream_id text NOT NULL, n int NOT NULL)"
            ).format(sql.Identifier(store.config.schema, "ledger"))
        )


def _ledger(store: PostgresEventStore) -> list[tuple[Any, ...]]:
    return read(store, "SELECT event_number FROM ledger ORDER BY 1")


def test_reset_is_refused_while_a_global_order_projection_runs_and_allowed_once_it_stopped(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    _create_ledger(event_store)
    with stack(event_store, kafka_namespace) as s:
        app = ledger_app(s.app_name, kafka_namespace.prefix, event_store.config.schema)
        (ledger,) = app.handlers
        append_noted(event_store, streams=3, per_stream=4)
        runner = s.run(ledger)
        eventually(lambda: len(_ledger(event_store)) == 12, timeout=60, what="ledger built")
        assert runner.status.leading

        with pytest.raises(HandlerRunning) as refused:
            reset_handler(app, s.config, ledger.name)
        assert refused.value.presence.leader is not None
        assert refused.value.presence.members == ()
        assert len(_ledger(event_store)) == 12  # nothing was changed

        env = worker_env(postgres_schema, kafka_namespace, s.app_name)
        cli = tidings("reset", ledger.name, "--app", APP, "--yes", env=env)
        assert cli.returncode == 1, cli.stdout
        assert f"handler {ledger.name!r} is running: its global-order lock is held by" in cli.stderr
        assert "Scale the workers that run it to zero first" in cli.stderr
        assert len(_ledger(event_store)) == 12

        runner.stop()
        eventually(lambda: not handler_presence(s.config, ledger.name).running, what="no contender left")
        report = reset_handler(app, s.config, ledger.name)
        assert report.tables == [f"{event_store.config.schema}.ledger"]
        assert _ledger(event_store) == []

        s.run(ledger)  # rebuilt from the origin, each event once (a repeat would fail the insert)
        every = [(n,) for n in range(1, 13)]
        eventually(lambda: _ledger(event_store) == every, timeout=60, what="rebuilt")


def test_a_standby_counts_as_running_and_a_worker_started_during_a_reset_waits_for_it(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    schema = event_store.config.schema
    _create_ledger(event_store)
    with stack(event_store, kafka_namespace) as s:
        app = ledger_app(s.app_name, kafka_namespace.prefix, schema)
        (ledger,) = app.handlers
        lock = handler_lock_name(schema, ledger.name)
        append_noted(event_store, streams=4, per_stream=3)

        # Another session holds the handler's lock: a worker started now only stands by.
        holder = Leadership(event_store.config.leadership_url, lock)
        assert holder.try_acquire()
        standby = s.run(ledger)
        eventually(lambda: standby.status.state == "standby", what="the worker stands by")
        shown = collect_status(
            event_store, kafka_namespace.bootstrap_servers, {}, topics=[s.topic], handlers=specs_of(app)
        ).handler(ledger.name)
        assert (shown.ordering, shown.standbys) == ("global", 1)
        assert shown.active is not None
        assert shown.active.endswith(f"pid {holder.pid}")
        with pytest.raises(HandlerRunning) as refused:
            reset_handler(app, s.config, ledger.name)
        assert refused.value.presence.leader is not None
        assert refused.value.presence.leader.pid == holder.pid
        # What the reset sees once it holds the lock itself: the standby alone, and that is running.
        seen = handler_presence(s.config, ledger.name, besides=holder.pid)
        assert seen.leader is None
        assert len(seen.standbys) == 1
        assert seen.running
        holder.release()
        eventually(lambda: len(_ledger(event_store)) == 12, timeout=60, what="ledger built")
        standby.stop()
        eventually(lambda: not handler_presence(s.config, ledger.name).running, what="no contender left")

        # A reset held inside before_reset: it holds the lock, and nobody else runs the handler.
        _hold_reset.set()
        _in_reset.clear()
        outcome: list[ResetReport | BaseException] = []

        def reset() -> None:
            try:
                outcome.append(reset_handler(app, s.config, ledger.name))
            except Exception as exc:  # noqa: BLE001 - the test asserts on it below
                outcome.append(exc)

        resetting = threading.Thread(target=reset, daemon=True)
        try:
            resetting.start()
            eventually(_in_reset.is_set, what="the reset holds in before_reset")
            with psycopg.connect(event_store.config.url, autocommit=True) as conn:
                assert [c.holds for c in contenders(conn, lock)] == [True]
            # A worker starting during the reset: it stands by, and touches nothing.
            late = s.run(ledger)
            eventually(lambda: late.status.state == "standby", what="the late worker stands by")
            append_noted(event_store, streams=4, per_stream=2, prefix="during")
            with pytest.raises(HandlerRunning):  # a second reset meanwhile: refused
                reset_handler(app, s.config, ledger.name)
            assert len(_ledger(event_store)) == 12
        finally:
            _hold_reset.clear()
            resetting.join(60)
        assert len(outcome) == 1
        assert isinstance(outcome[0], ResetReport), outcome

        # The late worker leads now, from the reset positions: every event once, nothing lost.
        eventually(lambda: late.status.leading is True, what="the late worker leads")
        every = [(n,) for n in range(1, 21)]  # 12 before the reset, 8 during it
        eventually(lambda: _ledger(event_store) == every, timeout=60, what="rebuilt")
        assert late.status.state == "running"


def test_a_per_key_worker_joining_during_a_reset_fails_it_instead_of_going_on_from_old_positions(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    _create_ledger(event_store)
    with stack(event_store, kafka_namespace) as s:
        app = ledger_app(s.app_name, kafka_namespace.prefix, event_store.config.schema, ordering="per_key")
        (ledger,) = app.handlers
        append_noted(event_store, streams=4, per_stream=3)
        first = s.run(ledger)
        eventually(lambda: len(_ledger(event_store)) == 12, timeout=60, what="ledger built")
        with pytest.raises(HandlerRunning) as refused:
            reset_handler(app, s.config, ledger.name)
        assert len(refused.value.presence.members) == 1
        first.stop()

        _hold_reset.set()
        _in_reset.clear()
        outcome: list[ResetReport | BaseException] = []

        def reset() -> None:
            try:
                outcome.append(reset_handler(app, s.config, ledger.name))
            except Exception as exc:  # noqa: BLE001 - the test asserts on it below
                outcome.append(exc)

        resetting = threading.Thread(target=reset, daemon=True)
        try:
            resetting.start()
            eventually(_in_reset.is_set, what="the reset holds in before_reset")
            # A per-key worker takes no lock: it joins the group and reads the positions of before.
            late = s.run(ledger)
            eventually(lambda: len(late.status.assigned) == 4, timeout=60, what="the late worker joined")
        finally:
            _hold_reset.clear()
            resetting.join(60)
        assert len(outcome) == 1
        assert isinstance(outcome[0], ResetRaced), outcome
        assert "joined its consumer group meanwhile" in str(outcome[0])


def test_standbys_of_two_long_names_with_one_beginning_are_told_apart(
    event_store: PostgresEventStore,
) -> None:
    # PostgreSQL keeps 63 bytes of an application_name: cut plainly, these two would look alike.
    base = f"tidings-handler.{event_store.config.schema}.{'x' * 80}"
    url = event_store.config.leadership_url
    holder, standby = Leadership(url, base + "a"), Leadership(url, base + "a")
    other = Leadership(url, base + "b")
    try:
        assert holder.try_acquire()
        assert not standby.try_acquire()  # its session stays open: a standby's
        assert other.try_acquire()
        with psycopg.connect(event_store.config.url, autocommit=True) as conn:
            mine = contenders(conn, base + "a")
            theirs = contenders(conn, base + "b")
        assert [(c.pid, c.holds) for c in mine] == [(holder.pid, True), (_pid(standby), False)]
        assert [(c.pid, c.holds) for c in theirs] == [(other.pid, True)]
    finally:
        for leadership in (holder, standby, other):
            leadership.release()


def _pid(leadership: Leadership) -> int:
    """The server pid of a standby's session (it holds nothing, so ``pid`` is None)."""
    conn = leadership._conn
    assert conn is not None
    return int(conn.info.backend_pid)
