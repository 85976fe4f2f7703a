"""The codec errors: one family, each with a message that says what to do next."""

from __future__ import annotations

import pickle

import pytest

from tidings import (
    CodecError,
    DeserializationError,
    DuplicateEventType,
    SerializationError,
    UnknownEventType,
    UpcastLoop,
)


@pytest.mark.parametrize(
    "error",
    [SerializationError, DeserializationError, UnknownEventType, DuplicateEventType, UpcastLoop],
)
def test_every_codec_error_is_a_codec_error(error: type[Exception]) -> None:
    assert issubclass(error, CodecError)


def test_a_located_error_keeps_its_message_and_adds_where_the_event_is() -> None:
    error = DeserializationError("Opened.owner", "missing field 'born'")
    assert str(error) == "Opened.owner: missing field 'born'"
    assert error.locate("acc-1", 2, 17) is error
    assert str(error) == "Opened.owner: missing field 'born' [stream 'acc-1' version 2, event number 17]"
    assert error.message == "Opened.owner: missing field 'born'"


def test_errors_survive_pickling_with_their_details() -> None:
    error = UnknownEventType("Closed").locate("acc-1", 2, None)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes, made on the line before
    assert type(copy) is UnknownEventType
    assert str(copy) == str(error)
    assert (copy.name, copy.stream_id, copy.event_number) == ("Closed", "acc-1", None)
