"""expected_version semantics, checked against a model of streams as plain counters."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    EventData,
    ExpectedVersion,
    PostgresEventStore,
    StreamExists,
    StreamNotFound,
    WrongExpectedVersion,
)

expectations = st.one_of(
    st.sampled_from([ANY, NO_STREAM, STREAM_EXISTS]), st.integers(min_value=0, max_value=6)
)
operations = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), expectations, st.integers(min_value=1, max_value=3)), max_size=15
)


def predict(version: int, expected: ExpectedVersion) -> type[Exception] | None:
    """The model: which error an append to a stream at ``version`` raises, or None if it succeeds."""
    if expected is ANY:
        return None
    if expected is NO_STREAM:
        return None if version == 0 else StreamExists
    if expected is STREAM_EXISTS:
        return None if version > 0 else StreamNotFound
    return None if version == expected else WrongExpectedVersion


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_appends_follow_the_model(
    event_store: PostgresEventStore, ops: list[tuple[str, ExpectedVersion, int]]
) -> None:
    prefix = uuid.uuid4().hex[:8]  # each example gets its own streams in the shared schema
    model: dict[str, int] = {}
    for name, expected, count in ops:
        stream = f"{prefix}-{name}"
        version = model.get(stream, 0)
        error = predict(version, expected)
        events = [EventData("E", b"x") for _ in range(count)]
        if error is None:
            assert event_store.append_to_stream(stream, expected, events) == version + count
            model[stream] = version + count
            continue
        with pytest.raises(error) as refused:
            event_store.append_to_stream(stream, expected, events)
        assert type(refused.value) is error
        if isinstance(refused.value, WrongExpectedVersion | StreamExists):
            assert refused.value.actual == version
    for stream, version in model.items():
        assert [e.stream_version for e in event_store.read_stream_forward(stream)] == list(
            range(1, version + 1)
        )
