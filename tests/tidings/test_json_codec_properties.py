"""Properties of JsonCodec over generated events: what is written always reads back equal."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from hypothesis import given

from tidings import JsonCodec

from .events import Everything, registry
from .strategies import everything, metadata

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
