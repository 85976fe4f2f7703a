"""Properties of JsonCodec over generated events: what is written always reads back equal."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings import JsonCodec
from tidings.errors import DeserializationError

from .events import Everything, registry
from .strategies import everything, metadata, plain_json

CODEC = JsonCodec(registry())


@given(everything)
def test_every_generated_event_reads_back_equal(event: Everything) -> None:
    encoded = CODEC.encode(event)
    assert encoded.event_type == "Everything"
    decoded = CODEC.decode(encoded.event_type, encoded.data, encoded.schema_id)
    assert decoded == event
    # Equality alone would let 1 == 1.0 or an IntEnum == its int slip through.
    assert isinstance(decoded, Everything)
    assert type(decoded.ratio) is float
    assert type(decoded.names) is tuple
    assert type(decoded.priority) is type(event.priority)


@given(everything)
def test_the_bytes_are_compact_utf8_json_with_one_key_per_field(event: Everything) -> None:
    data = CODEC.encode(event).data
    document = json.loads(data.decode("utf-8"))
    assert set(document) == {f.name for f in dataclasses.fields(Everything)}
    assert json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode() == data


@given(everything)
def test_encoding_is_deterministic(event: Everything) -> None:
    assert CODEC.encode(event) == CODEC.encode(event)


@given(metadata)
def test_plain_json_metadata_reads_back_equal(values: dict[str, Any]) -> None:
    assert CODEC.decode_metadata(CODEC.encode_metadata(values)) == values


stored_documents = st.dictionaries(
    st.text(),
    plain_json
    | st.integers(min_value=2**63, max_value=2**80)
    | st.integers(max_value=-(2**63) - 1, min_value=-(2**80))
    | st.sampled_from(["\ud800", "a\udfffb"]),
)


@given(stored_documents)
def test_any_stored_json_reads_exactly_as_pythons_reader_reads_it(document: dict[str, Any]) -> None:
    # Beyond 64-bit integers and escaped lone surrogates, which the fast reader would bend or refuse.
    data = json.dumps(document).encode()
    read = CODEC.decode_metadata(data)
    expected = json.loads(data)
    assert read == expected
    assert [type(v) for v in read.values()] == [type(v) for v in expected.values()]


@given(st.sampled_from([b"NaN", b"Infinity", b"-Infinity"]), st.text(max_size=5))
def test_json_constants_no_other_reader_takes_are_refused(constant: bytes, key: str) -> None:
    with pytest.raises(DeserializationError, match="not UTF-8 JSON"):
        CODEC.decode_metadata(b"{" + json.dumps(key).encode() + b":" + constant + b"}")
