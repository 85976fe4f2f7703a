"""Long or idle transactions hold back sequencing: the store bounds its own, and every stall is visible."""

from __future__ import annotations

import logging
import threading
import time

import psycopg
import pytest
from prometheus_client import REGISTRY

from eventstore import ANY, EventData, PostgresEventStore, StoreConfig, StoreUnavailable, migrate
from tidings.pytest_plugin import PostgresSchema

IDLE_TIMEOUT = 2.0
DEADLINE = 30.0


def _stalled(schema: str) -> float | None:
    return REGISTRY.get_sample_value("tidings_sequencer_stalled", {"schema": schema})


def _wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def bounded_store(postgres_schema: PostgresSchema) -> PostgresEventStore:
    config = StoreConfig(
        postgres_schema.server_url, postgres_schema.name, idle_in_transaction_timeout=IDLE_TIMEOUT
    )
    migrate(config)
    return PostgresEventStore(config, sequencer_poll_interval=0.02)


def test_an_idle_transaction_of_the_store_is_ended_and_sequencing_resumes(
    bounded_store: PostgresEventStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = bounded_store
    schema = store.config.schema
    caplog.set_level(logging.WARNING, logger="eventstore.sequencer")
    holding = threading.Event()
    outcome: list[BaseException] = []

    def forget_to_commit() -> None:
        try:
            with store.connection() as conn:
                store.append_to_stream("forgotten", ANY, [EventData("E", b"never")], connection=conn)
                holding.set()
                time.sleep(IDLE_TIMEOUT * 3)  # idle in transaction, far past the bound
        except BaseException as exc:  # noqa: BLE001 - the outcome is what the test inspects
            outcome.append(exc)

    idle = threading.Thread(target=forget_to_commit)
    idle.start()
    try:
        assert holding.wait(DEADLINE)
        started = time.monotonic()
        store.append_to_stream("busy", ANY, [EventData("E", b"committed behind the idle one")])

        # The stall is visible while it lasts: status, metric and a log line naming the blocker.
        _wait_for(lambda: store.sequencer.status.stalled, "the sequencer to report a stall")
        _wait_for(lambda: _stalled(schema) == 1.0, "the stalled metric")
        assert store.read_all_forward() == []

        # PostgreSQL ends the idle session after the bound; the committed event is then numbered.
        _wait_for(
            lambda: [e.data for e in store.read_all_forward()] == [b"committed behind the idle one"],
            "the committed event to be numbered",
        )
        waited = time.monotonic() - started
        assert waited < IDLE_TIMEOUT + 10, f"sequencing stalled {waited:.1f}s, beyond the bound"
        _wait_for(lambda: _stalled(schema) == 0.0, "the stalled metric to clear")
    finally:
        idle.join(timeout=DEADLINE)
        store.close()
    assert len(outcome) == 1
    assert isinstance(outcome[0], StoreUnavailable)  # the forgotten transaction learns it was ended
    assert any("sequencing stalled" in r.getMessage() for r in caplog.records)
    assert store_has_no_stream_named(store, "forgotten")


def store_has_no_stream_named(store: PostgresEventStore, name: str) -> bool:
    reopened = PostgresEventStore(store.config, sequencer=False)
    try:
        return name not in [s.stream_id for s in reopened.list_streams()]
    finally:
        reopened.close()


def test_a_foreign_transaction_is_named_as_the_blocker(
    event_store: PostgresEventStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="eventstore.sequencer")
    # A session the store does not own (another service, a psql prompt) that wrote and went quiet.
    with psycopg.connect(event_store.config.url) as foreign:
        foreign.execute("CREATE TEMP TABLE scratch (x int)")
        foreign.execute("INSERT INTO scratch VALUES (1)")
        foreign_pid = foreign.info.backend_pid
        event_store.append_to_stream("busy", ANY, [EventData("E", b"waits")])
        _wait_for(
            lambda: any(getattr(r, "blocking_pid", None) == foreign_pid for r in caplog.records),
            "a log line naming the blocking backend",
        )
        assert event_store.read_all_forward() == []
        foreign.commit()
    _wait_for(lambda: len(event_store.read_all_forward()) == 1, "sequencing to resume after the commit")
    assert not event_store.sequencer.status.stalled
