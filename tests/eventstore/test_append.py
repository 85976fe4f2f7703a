"""Appending: expectations, errors that write nothing, joining the caller's transaction."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from eventstore import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    DuplicateEvent,
    EmptyAppend,
    EventData,
    EventFieldTooLong,
    InvalidStreamId,
    PayloadTooLarge,
    PostgresEventStore,
    StoreConfig,
    StoreUnavailable,
    StreamExists,
    StreamNotFound,
    WrongExpectedVersion,
    migrate,
)
from tidings.devservices.runs import free_port
from tidings.pytest_plugin import PostgresSchema


def _events(*types: str) -> list[EventData]:
    return [EventData(t, f'{{"n": {i}}}'.encode()) for i, t in enumerate(types)]


def test_append_then_read_back_everything_recorded(event_store: PostgresEventStore) -> None:
    causation, correlation = uuid.uuid4(), uuid.uuid4()
    first = EventData(
        "AccountOpened", b'{"owner": "ada"}', b'{"user": "u-1"}', "json", uuid.uuid4(), causation, correlation
    )
    assert event_store.append_to_stream("account-1", NO_STREAM, [first, *_events("Deposited")]) == 2
    recorded = event_store.read_stream_forward("account-1")
    assert [(r.stream_id, r.stream_version, r.event_type) for r in recorded] == [
        ("account-1", 1, "AccountOpened"),
        ("account-1", 2, "Deposited"),
    ]
    head = recorded[0]
    assert (head.event_id, head.data, head.metadata, head.schema_id) == (
        first.event_id,
        first.data,
        first.metadata,
        "json",
    )
    assert (head.causation_id, head.correlation_id) == (causation, correlation)
    assert head.created_at.utcoffset() is not None
    assert head.created_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_expected_versions(event_store: PostgresEventStore) -> None:
    store = event_store
    assert store.append_to_stream("s", 0, _events("A")) == 1
    assert store.append_to_stream("s", 1, _events("B", "C")) == 3
    assert store.append_to_stream("s", STREAM_EXISTS, _events("D")) == 4
    assert store.append_to_stream("s", ANY, _events("E")) == 5
    with pytest.raises(WrongExpectedVersion) as wrong:
        store.append_to_stream("s", 3, _events("X"))
    assert (wrong.value.expected, wrong.value.actual) == (3, 5)
    with pytest.raises(WrongExpectedVersion) as zero:
        store.append_to_stream("s", 0, _events("X"))
    assert zero.value.actual == 5
    with pytest.raises(StreamExists):
        store.append_to_stream("s", NO_STREAM, _events("X"))
    with pytest.raises(StreamNotFound):
        store.append_to_stream("missing", STREAM_EXISTS, _events("X"))
    with pytest.raises(WrongExpectedVersion) as missing:
        store.append_to_stream("missing", 2, _events("X"))
    assert missing.value.actual == 0
    assert store.stream_info("s").stream_version == 5
    assert len(store.read_stream_forward("s")) == 5


@pytest.mark.parametrize("bad", ["", "   ", "$all", "a\x00b", "x" * 256, "tab\there"])
def test_invalid_stream_ids_write_nothing(event_store: PostgresEventStore, bad: str) -> None:
    with pytest.raises(InvalidStreamId):
        event_store.append_to_stream(bad, ANY, _events("A"))
    assert event_store.list_streams() == []


def test_an_oversized_event_fails_the_whole_append(postgres_schema: PostgresSchema) -> None:
    config = StoreConfig(postgres_schema.server_url, postgres_schema.name, max_event_bytes=1000)
    migrate(config)
    with PostgresEventStore(config) as store:
        with pytest.raises(PayloadTooLarge, match="over the limit of 1000"):
            store.append_to_stream("s", ANY, [EventData("Small", b"x"), EventData("Big", b"x" * 1001)])
        assert store.list_streams() == []


def test_an_event_of_exactly_the_limit_is_accepted_and_one_byte_more_is_refused(
    postgres_schema: PostgresSchema,
) -> None:
    config = StoreConfig(postgres_schema.server_url, postgres_schema.name, max_event_bytes=1000)
    migrate(config)
    with PostgresEventStore(config) as store:
        store.append_to_stream("s", ANY, [EventData("Full", b"x" * 990, metadata=b'{"k": "v"}')])
        with pytest.raises(PayloadTooLarge) as refused:
            store.append_to_stream("s", ANY, [EventData("Over", b"x" * 991, metadata=b'{"k": "v"}')])
        assert (refused.value.size, refused.value.limit) == (1001, 1000)
        assert store.stream_info("s").stream_version == 1


@pytest.mark.parametrize("field", ["event_type", "schema_id"])
def test_an_event_type_or_schema_id_over_255_characters_writes_nothing(
    event_store: PostgresEventStore, field: str
) -> None:
    longest = EventData(**{"event_type": "E", "data": b"", field: "\U0001f4e6" * 255})  # type: ignore[arg-type]
    event_store.append_to_stream("s", ANY, [longest])
    too_long = EventData(**{"event_type": "E", "data": b"", field: "x" * 256})  # type: ignore[arg-type]
    with pytest.raises(EventFieldTooLong, match=f"its {field} is 256 characters, over the limit of 255"):
        event_store.append_to_stream("s", ANY, [EventData("A", b""), too_long])
    assert event_store.stream_info("s").stream_version == 1


def test_bad_input_is_typed_and_writes_nothing(event_store: PostgresEventStore) -> None:
    with pytest.raises(EmptyAppend):
        event_store.append_to_stream("s", ANY, [])
    with pytest.raises(TypeError, match="EventData"):
        event_store.append_to_stream("s", ANY, [{"type": "A"}])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="bytes"):
        event_store.append_to_stream("s", ANY, [EventData("A", "not bytes")])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected_version"):
        event_store.append_to_stream("s", -1, _events("A"))
    assert event_store.list_streams() == []


def test_a_duplicate_event_id_rejects_the_whole_append(event_store: PostgresEventStore) -> None:
    event = EventData("A", b"1")
    event_store.append_to_stream("s", NO_STREAM, [event])
    with pytest.raises(DuplicateEvent):
        event_store.append_to_stream("s", 1, [EventData("B", b"2"), event])
    assert event_store.stream_info("s").stream_version == 1
    assert [e.event_type for e in event_store.read_stream_forward("s")] == ["A"]


def test_append_joins_the_callers_transaction(event_store: PostgresEventStore) -> None:
    with event_store.connection() as conn:
        event_store.append_to_stream("kept", NO_STREAM, _events("A"), connection=conn)
        conn.execute("SELECT 1")

    def fails_after_appending() -> None:
        with event_store.connection() as conn:
            event_store.append_to_stream("dropped", NO_STREAM, _events("A"), connection=conn)
            raise RuntimeError("the caller's work failed")

    with pytest.raises(RuntimeError):
        fails_after_appending()
    assert [s.stream_id for s in event_store.list_streams()] == ["kept"]
    event_store.sequencer.catch_up()
    assert [e.stream_id for e in event_store.read_all_forward()] == ["kept"]


def test_append_through_a_plain_psycopg_connection(event_store: PostgresEventStore) -> None:
    with psycopg.connect(event_store.config.url) as conn:
        event_store.append_to_stream("outside", NO_STREAM, _events("A", "B"), connection=conn)
        conn.rollback()
        event_store.append_to_stream("outside", NO_STREAM, _events("C"), connection=conn)
        conn.commit()
    assert [e.event_type for e in event_store.read_stream_forward("outside")] == ["C"]


def test_an_unreachable_database_is_a_typed_error(postgres_schema: PostgresSchema) -> None:
    config = StoreConfig(
        f"postgresql://nobody:secret-pw@127.0.0.1:{free_port()}/none",
        postgres_schema.name,
        statement_timeout=2,
    )
    with pytest.raises(StoreUnavailable) as caught:
        PostgresEventStore(config)
    assert "secret-pw" not in str(caught.value)


def test_the_stores_sessions_are_bounded_and_keep_options_from_the_url(
    postgres_schema: PostgresSchema,
) -> None:
    # postgres_schema.url carries its own options (a search_path); the store adds its timeouts.
    config = StoreConfig(
        postgres_schema.url, postgres_schema.name, idle_in_transaction_timeout=7, statement_timeout=9
    )
    migrate(config)
    with PostgresEventStore(config, sequencer=False) as store, store.connection() as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()  # type: ignore[call-overload]
            for name in ("idle_in_transaction_session_timeout", "statement_timeout", "search_path", "jit")
        }
    assert settings == {
        "idle_in_transaction_session_timeout": ("7s",),
        "statement_timeout": ("9s",),
        "search_path": (postgres_schema.name,),
        "jit": ("off",),
    }
