"""The generated Avro decoder against fastavro: the same value for every encoding, typed errors otherwise."""

from __future__ import annotations

import contextlib
import io
import struct
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.tidings.avro_support import avro_values, record_schemas
from tidings.avro.decoder import MAX_EMPTY_ITEMS, MalformedAvro, compile_decoder, read_long

# What damaged bytes may raise from the generated code (the codec turns each into a DeserializationError).
DAMAGE = (MalformedAvro, ValueError, IndexError, struct.error, RecursionError)

EVERYTHING = parse_schema(
    {
        "type": "record",
        "name": "test.Everything",
        "fields": [
            {"name": "nothing", "type": "null"},
            {"name": "flag", "type": "boolean"},
            {"name": "small", "type": "int"},
            {"name": "big", "type": "long"},
            {"name": "single", "type": "float"},
            {"name": "double", "type": {"type": "double"}},
            {"name": "raw", "type": "bytes"},
            {"name": "text", "type": "string"},
            {"name": "four", "type": {"type": "fixed", "name": "Four", "size": 4}},
            {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN"]}},
            {"name": "numbers", "type": {"type": "array", "items": "long"}},
            {"name": "labels", "type": {"type": "map", "values": "string"}},
            {
                "name": "point",
                "type": {
                    "type": "record",
                    "name": "Point",
                    "fields": [{"name": "x", "type": "double"}, {"name": "y", "type": "double"}],
                },
            },
            {"name": "choice", "type": ["null", "string", "long", "Point"]},
            {"name": "points", "type": {"type": "array", "items": "Point"}},
            {"name": "groups", "type": {"type": "map", "values": {"type": "array", "items": "Colour"}}},
            {"name": "gaps", "type": {"type": "array", "items": "null"}},
            {"name": "empty", "type": {"type": "record", "name": "Empty", "fields": []}},
            {"name": "again", "type": ["null", "Four"]},
        ],
    }
)
LINKED = parse_schema(
    {
        "type": "record",
        "name": "test.Node",
        "fields": [{"name": "value", "type": "long"}, {"name": "next", "type": ["null", "Node"]}],
    }
)
NOT_A_RECORD = parse_schema({"type": "array", "items": ["null", "string", "double"]})


def encode(schema: Any, datum: Any) -> bytes:
    buffer = io.BytesIO()
    schemaless_writer(buffer, schema, datum)
    return buffer.getvalue()


def fastavro_reads(schema: Any, data: bytes) -> Any:
    return schemaless_reader(io.BytesIO(data), schema, None)


def case(schema: Any) -> st.SearchStrategy[tuple[Any, bytes]]:
    datums = avro_values(schema, binary=st.binary(max_size=300), text=st.text(max_size=300), items=5)
    return datums.map(lambda datum: (schema, encode(schema, datum)))


encodings = st.one_of(case(EVERYTHING), case(LINKED), case(NOT_A_RECORD))


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=200)
@given(data=st.data())
def test_every_generated_schema_reads_as_fastavro_reads_it(data: st.DataObject) -> None:
    schema = parse_schema(data.draw(record_schemas(), label="schema"))
    _, encoded = data.draw(case(schema), label="encoding")
    assert compile_decoder(schema)(encoded, 0) == (fastavro_reads(schema, encoded), len(encoded))


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(encoding=encodings)
def test_every_encoding_reads_as_fastavro_reads_it(encoding: tuple[Any, bytes]) -> None:
    schema, data = encoding
    value, end = compile_decoder(schema)(b"\x07\x07" + data, 2)  # at an offset, as after a header
    assert value == fastavro_reads(schema, data)
    assert end == len(data) + 2


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=100)
@given(encoding=encodings, cut=st.integers(min_value=1))
def test_truncated_bytes_raise_or_read_as_fastavro_reads_them(encoding: tuple[Any, bytes], cut: int) -> None:
    schema, data = encoding
    prefix = data[: max(0, len(data) - cut)]
    try:
        value, end = compile_decoder(schema)(prefix, 0)
    except DAMAGE:
        return
    # A shorter value can be valid by itself (an array's end marker where an item began): then it is read as
    # fastavro reads it, and the codec's check that every byte was used catches the rest.
    assert (value, end) == (fastavro_reads(schema, prefix[:end]), end)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(
    encoding=encodings, flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=4)
)
def test_damaged_bytes_only_raise_damage_errors(
    encoding: tuple[Any, bytes], flips: list[tuple[int, int]]
) -> None:
    schema, data = encoding
    damaged = bytearray(data)
    for position, byte in flips:
        if damaged:
            damaged[position % len(damaged)] = byte
    with contextlib.suppress(*DAMAGE):
        compile_decoder(schema)(bytes(damaged), 0)


@given(data=st.binary(max_size=200))
def test_random_bytes_only_raise_damage_errors(data: bytes) -> None:
    for schema in (EVERYTHING, LINKED, NOT_A_RECORD):
        with contextlib.suppress(*DAMAGE):
            compile_decoder(schema)(data, 0)


def test_blocks_with_a_negative_count_and_a_byte_size_read_as_in_the_specification() -> None:
    schema = parse_schema({"type": "array", "items": "long"})
    # -3 items (zig-zag 5), a block of 3 bytes, the items 1, 2, 3 (zig-zag 2, 4, 6), then the array's end.
    data = bytes([5, 6, 2, 4, 6, 0])
    assert compile_decoder(schema)(data, 0) == ([1, 2, 3], len(data))
    assert fastavro_reads(schema, data) == [1, 2, 3]


def test_a_block_count_larger_than_the_bytes_left_is_malformed() -> None:
    schema = parse_schema({"type": "array", "items": "long"})
    with pytest.raises(MalformedAvro, match="cannot fit"):
        compile_decoder(schema)(bytes([0x80, 0x80, 0x80, 0x80, 0x10, 2]), 0)


def test_a_huge_block_of_nulls_is_malformed_rather_than_built() -> None:
    schema = parse_schema({"type": "array", "items": "null"})
    count = (MAX_EMPTY_ITEMS + 1) * 2  # zig-zag of MAX_EMPTY_ITEMS + 1
    varint = bytearray()
    while count >= 0x80:
        varint.append(count & 0x7F | 0x80)
        count >>= 7
    varint.append(count)
    with pytest.raises(MalformedAvro, match="empty items"):
        compile_decoder(schema)(bytes(varint) + b"\x00", 0)
    # Up to the limit, nulls are read like anything else.
    assert compile_decoder(schema)(bytes([6, 0]), 0) == ([None, None, None], 2)


@given(value=st.integers(-(2**63), 2**63 - 1))
@example(0)
@example(-1)
@example(2**63 - 1)
@example(-(2**63))
@example(2**48 - 1)  # the last of seven bytes
@example(2**48)  # the first of eight
@example(2**55 - 1)  # the last of eight
@example(2**55)
@example(-(2**55))
def test_every_long_reads_back_whatever_its_length(value: int) -> None:
    data = encode("long", value)
    assert read_long(data + b"\x00" * 8, 0) == (value, len(data))  # bytes after it are left alone


def test_a_varint_longer_than_ten_bytes_is_malformed() -> None:
    with pytest.raises(MalformedAvro, match="longer than 10 bytes"):
        compile_decoder("long")(b"\xff" * 11 + b"\x01", 0)


@pytest.mark.parametrize(
    ("schema", "data", "message"),
    [
        ("boolean", b"\x02", "not a boolean"),
        ({"type": "enum", "name": "test.E", "symbols": ["A", "B"]}, b"\x04", "enum index 2 is not one of 2"),
        (["null", "long"], b"\x04", "union branch 2 of 2"),
        ("string", b"\x0a" + b"abc", "run past the end"),
        ("bytes", b"\x01", "run past the end"),  # a negative length
        ({"type": "fixed", "name": "test.F", "size": 4}, b"abc", "runs past the end"),
    ],
)
def test_values_outside_the_schema_are_malformed(schema: Any, data: bytes, message: str) -> None:
    with pytest.raises(MalformedAvro, match=message):
        compile_decoder(parse_schema(schema))(data, 0)


def test_a_long_linked_list_reads_through_the_recursive_record() -> None:
    node: dict[str, Any] | None = None
    for value in range(200):
        node = {"value": value, "next": node}
    data = encode(LINKED, node)
    assert compile_decoder(LINKED)(data, 0) == (node, len(data))


def test_the_top_level_record_can_be_built_into_an_object() -> None:
    decode = compile_decoder(LINKED, build=("make(f_value, f_next)", {"make": lambda v, n: ("node", v, n)}))
    data = encode(LINKED, {"value": 1, "next": {"value": 2, "next": None}})
    # Only the top record is built; the nested one is the dict fastavro would give.
    assert decode(data, 0) == (("node", 1, {"value": 2, "next": None}), len(data))


def test_schemas_the_generator_cannot_take_are_refused() -> None:
    with pytest.raises(ValueError, match="only a record"):
        compile_decoder("long", build=("x", {}))
    with pytest.raises(ValueError, match="decoder's own"):
        compile_decoder(LINKED, build=("read_long", {"read_long": len}))
    with pytest.raises(ValueError, match="not Avro field names"):
        compile_decoder({"type": "record", "name": "test.Bad", "fields": [{"name": "a b", "type": "long"}]})
    with pytest.raises(ValueError, match="before defining it"):
        compile_decoder({"type": "array", "items": "test.Nowhere"})
