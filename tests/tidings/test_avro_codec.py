"""The Avro codec without services: round trips, evolution, class/schema binding, damaged bytes."""

from __future__ import annotations

import contextlib
import enum
import io
import re
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from fastavro import schemaless_reader
from hypothesis import given
from hypothesis import strategies as st

from eventstore import RecordedEvent
from examples.bank import events as bank
from tests.tidings.avro_support import SCHEMAS, bank_events, write_schema
from tidings import (
    CodecError,
    DeserializationError,
    EventMapper,
    RenameEventType,
    SchemaFileError,
    SchemaMismatch,
    SerializationError,
    TypeRegistry,
    UnknownSchema,
)
from tidings.avro import SINGLE_OBJECT_MARKER, AvroCodec, SchemaSet, schema_fingerprint, schema_for
from tidings.avro.binding import Binding, uuid_from_text

# --- every Avro type the project maps -----------------------------------------------------------------


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


@dataclass(frozen=True)
class Address:
    street: str
    number: int


@dataclass(frozen=True)
class Everything:
    text: str
    flag: bool
    count: int
    small: int
    ratio: float
    single: float
    blob: bytes
    ident: uuid.UUID
    at: datetime
    at_ms: datetime
    on: date
    price: Decimal
    colour: Colour
    maybe: str | None
    items: list[int]
    labels: dict[str, str]
    address: Address
    history: list[Address] = field(default_factory=list)


EVERYTHING_SCHEMA = {
    "type": "record",
    "name": "Everything",
    "namespace": "tests",
    "fields": [
        {"name": "text", "type": "string"},
        {"name": "flag", "type": "boolean"},
        {"name": "count", "type": "long"},
        {"name": "small", "type": "int"},
        {"name": "ratio", "type": "double"},
        {"name": "single", "type": "float"},
        {"name": "blob", "type": "bytes"},
        {"name": "ident", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "at_ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "on", "type": {"type": "int", "logicalType": "date"}},
        {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 30, "scale": 6}},
        {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN"]}},
        {"name": "maybe", "type": ["null", "string"]},
        {"name": "items", "type": {"type": "array", "items": "long"}},
        {"name": "labels", "type": {"type": "map", "values": "string"}},
        {
            "name": "address",
            "type": {
                "type": "record",
                "name": "Address",
                "fields": [{"name": "street", "type": "string"}, {"name": "number", "type": "long"}],
            },
        },
        {"name": "history", "type": {"type": "array", "items": "Address"}, "default": []},
    ],
}

moments = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))
everything = st.builds(
    Everything,
    text=st.text(),
    flag=st.booleans(),
    count=st.integers(-(2**63), 2**63 - 1),
    small=st.integers(-(2**31), 2**31 - 1),
    ratio=st.floats(allow_nan=False),
    single=st.floats(width=32, allow_nan=False),
    blob=st.binary(max_size=64),
    ident=st.uuids(),
    at=moments,
    # millisecond precision is all timestamp-millis keeps
    at_ms=moments.map(lambda m: m.replace(microsecond=m.microsecond // 1000 * 1000)),
    on=st.dates(min_value=date(1, 1, 1), max_value=date(9999, 12, 31)),
    price=st.decimals(places=6, min_value=-(10**23), max_value=10**23, allow_nan=False, allow_infinity=False),
    colour=st.sampled_from(Colour),
    maybe=st.none() | st.text(max_size=10),
    items=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5),
    labels=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    address=st.builds(Address, st.text(max_size=10), st.integers(0, 10_000)),
    history=st.lists(st.builds(Address, st.text(max_size=10), st.integers(0, 10_000)), max_size=3),
)


@pytest.fixture(scope="module")
def everything_codec(tmp_path_factory: pytest.TempPathFactory) -> AvroCodec:
    root = tmp_path_factory.mktemp("schemas")
    write_schema(root, EVERYTHING_SCHEMA, 1)
    registry = TypeRegistry(namespace="tests")
    registry.register(Everything)
    return AvroCodec(registry, SchemaSet.load(root))


@pytest.fixture(scope="module")
def bank_codec() -> AvroCodec:
    return AvroCodec(bank.events, SchemaSet.load(SCHEMAS))


@given(event=everything)
def test_every_mapped_avro_type_round_trips(everything_codec: AvroCodec, event: Everything) -> None:
    encoded = everything_codec.encode(event)
    assert encoded.data.startswith(SINGLE_OBJECT_MARKER)
    assert everything_codec.decode(encoded.event_type, encoded.data, encoded.schema_id) == event


@given(event=everything)
def test_the_generated_decoder_reads_what_fastavro_reads(
    everything_codec: AvroCodec, event: Everything
) -> None:
    encoded = everything_codec.encode(event)
    version = everything_codec.schemas.latest(encoded.event_type)
    assert version is not None
    datum = schemaless_reader(io.BytesIO(encoded.data[10:]), version.physical, None)
    through_fastavro = Binding(Everything, version.schema).from_datum(datum)
    assert everything_codec.decode(encoded.event_type, encoded.data, encoded.schema_id) == through_fastavro


@given(event=bank_events)
def test_every_bank_event_round_trips(bank_codec: AvroCodec, event: object) -> None:
    encoded = bank_codec.encode(event)
    version = bank_codec.schemas.latest(encoded.event_type)
    assert version is not None
    # Single-object encoding: marker, then the fingerprint of the schema that wrote the body.
    assert encoded.data[:10] == SINGLE_OBJECT_MARKER + version.fingerprint
    assert encoded.schema_id == f"avro:{version.fingerprint.hex()}"
    assert bank_codec.decode(encoded.event_type, encoded.data, encoded.schema_id) == event
    document = bank_codec.parse(encoded.event_type, encoded.data, encoded.schema_id)
    assert bank_codec.build(encoded.event_type, document) == event


def test_the_fingerprint_is_the_avro_specifications_crc_64() -> None:
    # The value the Avro specification's reference implementations give for the schema "int",
    # written little-endian as single-object encoding requires.
    assert schema_fingerprint("int") == (0x7275D51A3F395C8F).to_bytes(8, "little")


def test_each_bank_event_class_matches_its_schema_file() -> None:
    schemas = SchemaSet.load(SCHEMAS)
    for name in bank.events.names():
        version = schemas.latest(name)
        assert version is not None, name
        assert version.schema == schema_for(bank.events.class_for(name), name)


# --- values that do not fit -------------------------------------------------------------------------


def test_values_that_do_not_fit_the_schema_are_typed_errors(bank_codec: AvroCodec) -> None:
    account = uuid.uuid4()
    naive = datetime(2026, 1, 1)  # the point of the test
    with pytest.raises(SerializationError, match="naive datetime"):
        bank_codec.encode(bank.MoneyDeposited(account, Decimal("1.00"), Decimal("1.00"), naive))
    with pytest.raises(SerializationError, match="decimal places"):
        bank_codec.encode(bank.MoneyDeposited(account, Decimal("1.001"), Decimal("1"), datetime.now(UTC)))
    with pytest.raises(SerializationError, match="18 digits"):
        bank_codec.encode(bank.MoneyDeposited(account, Decimal(10**17), Decimal("1"), datetime.now(UTC)))
    with pytest.raises(SerializationError, match=r"bank\.AccountOpened"):
        bank_codec.encode(bank.AccountOpened(account, 42, "EUR", datetime.now(UTC), Decimal(0)))  # type: ignore[arg-type]


# --- class and schema must agree ----------------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    account: uuid.UUID
    owner: str
    note: str | None = None
    limit: int = 0


OPENED_SCHEMA = {
    "type": "record",
    "name": "Opened",
    "namespace": "shop",
    "fields": [
        {"name": "account", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "owner", "type": "string"},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "limit", "type": "long", "default": 0},
    ],
}


def _codec_for(tmp_path: Path, cls: type, *schemas: dict[str, object]) -> AvroCodec:
    for version, schema in enumerate(schemas, start=1):
        write_schema(tmp_path, dict(schema), version)
    registry = TypeRegistry()
    registry.register(cls, name="shop.Opened")
    return AvroCodec(registry, SchemaSet.load(tmp_path))


def _with_fields(schema: dict[str, object], fields: list[dict[str, object]]) -> dict[str, object]:
    return {**schema, "fields": fields}


@pytest.mark.parametrize(
    ("fields", "difference"),
    [
        pytest.param(
            OPENED_SCHEMA["fields"][:3], "shop.Opened.limit: in Opened but not in the schema", id="name"
        ),
        pytest.param(
            [*OPENED_SCHEMA["fields"][:3], {"name": "limit", "type": "string", "default": "0"}],
            "limit: int in the class needs long or int",
            id="type",
        ),
        pytest.param(
            [*OPENED_SCHEMA["fields"][:3], {"name": "limit", "type": "long", "default": 5}],
            "defaults differ (class 0, schema 5)",
            id="default",
        ),
        pytest.param(
            [
                *OPENED_SCHEMA["fields"][:2],
                {"name": "note", "type": "string", "default": ""},
                OPENED_SCHEMA["fields"][3],
            ],
            "nullable in the class but not in the schema",
            id="nullability",
        ),
        pytest.param(
            [
                {"name": "account", "type": "string"},
                *OPENED_SCHEMA["fields"][1:],
            ],
            "needs logicalType uuid",
            id="logical type",
        ),
    ],
)
def test_a_class_that_disagrees_with_its_schema_stops_the_codec_at_start(
    tmp_path: Path, fields: list[dict[str, object]], difference: str
) -> None:
    with pytest.raises(SchemaMismatch) as caught:
        _codec_for(tmp_path, Opened, _with_fields(OPENED_SCHEMA, fields))
    assert caught.value.event_type == "shop.Opened"
    assert any(difference in d for d in caught.value.differences), caught.value.differences
    assert "tidings schemas check" in str(caught.value)


def test_a_registered_class_without_a_schema_file_stops_the_codec(tmp_path: Path) -> None:
    (tmp_path / "shop").mkdir()
    registry = TypeRegistry()
    registry.register(Opened, name="shop.Opened")
    with pytest.raises(SchemaMismatch, match=r"shop/Opened/v1\.avsc"):
        AvroCodec(registry, SchemaSet.load(tmp_path))


@pytest.mark.parametrize(
    ("path", "text", "problem"),
    [
        ("shop/Opened/v1.avsc", "{not json", "not JSON"),
        ("shop/Opened/one.avsc", "{}", "v<N>.avsc"),
        (
            "shop/Closed/v1.avsc",
            '{"type": "record", "name": "Opened", "namespace": "shop", "fields": []}',
            "move",
        ),
        (
            "shop/Opened/v1.avsc",
            '{"type": "record", "name": "Opened", "namespace": "shop", "fields": 3}',
            "Avro",
        ),
    ],
)
def test_a_bad_schema_file_is_a_typed_error_naming_the_file(
    tmp_path: Path, path: str, text: str, problem: str
) -> None:
    target = tmp_path / path
    target.parent.mkdir(parents=True)
    target.write_text(text)
    with pytest.raises(SchemaFileError, match=problem) as caught:
        SchemaSet.load(tmp_path)
    assert caught.value.where == path


# --- evolution ----------------------------------------------------------------------------------------


class Status(enum.Enum):
    NEW = 1
    PAID = 2


class StatusV2(enum.Enum):
    NEW = 1
    PAID = 2
    SHIPPED = 3


@dataclass(frozen=True)
class OrderV1:
    order: uuid.UUID
    quantity: int
    status: Status
    note: str
    price: int


@dataclass(frozen=True)
class OrderV2:
    order: uuid.UUID
    count: int  # renamed from quantity, with an alias
    status: StatusV2  # a symbol added
    price: float  # promoted from int
    channel: str = "web"  # added with a default; note was removed


ORDER_V1 = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [
        {"name": "order", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "quantity", "type": "int"},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
        {"name": "note", "type": "string"},
        {"name": "price", "type": "int"},
    ],
}
ORDER_V2 = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [
        {"name": "order", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "count", "type": "long", "aliases": ["quantity"]},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID", "SHIPPED"]}},
        {"name": "price", "type": "double"},
        {"name": "channel", "type": "string", "default": "web"},
    ],
}


def _order_codecs(tmp_path: Path) -> tuple[AvroCodec, AvroCodec]:
    old_root, new_root = tmp_path / "old", tmp_path / "new"
    write_schema(old_root, ORDER_V1, 1)
    write_schema(new_root, ORDER_V1, 1)
    write_schema(new_root, ORDER_V2, 2)
    old, new = TypeRegistry(), TypeRegistry()
    old.register(OrderV1, name="shop.Order")
    new.register(OrderV2, name="shop.Order")
    return AvroCodec(old, SchemaSet.load(old_root)), AvroCodec(new, SchemaSet.load(new_root))


@given(
    order=st.uuids(),
    quantity=st.integers(-(2**31), 2**31 - 1),
    status=st.sampled_from(Status),
    note=st.text(max_size=10),
    price=st.integers(-(2**31), 2**31 - 1),
)
def test_events_written_with_an_old_version_read_into_todays_class(
    tmp_path_factory: pytest.TempPathFactory,
    order: uuid.UUID,
    quantity: int,
    status: Status,
    note: str,
    price: int,
) -> None:
    old, new = _order_codecs(tmp_path_factory.mktemp("evolution"))
    written = old.encode(OrderV1(order, quantity, status, note, price))
    expected = OrderV2(order, quantity, StatusV2[status.name], float(price), "web")
    # Directly (Avro's resolution while decoding) and through parse/build (the upcasting path).
    assert new.decode("shop.Order", written.data, written.schema_id) == expected
    assert new.build("shop.Order", new.parse("shop.Order", written.data, written.schema_id)) == expected
    # Today's events are written with version 2.
    assert new.encode(expected).data[2:10] == schema_fingerprint(ORDER_V2)


def test_a_renamed_event_type_is_read_through_an_upcaster(tmp_path: Path) -> None:
    old_schema = {**OPENED_SCHEMA, "name": "AccountOpened"}
    write_schema(tmp_path, old_schema, 1)
    write_schema(tmp_path, OPENED_SCHEMA, 1)
    writer_registry, reader_registry = TypeRegistry(), TypeRegistry()
    writer_registry.register(Opened, name="shop.AccountOpened")
    reader_registry.register(Opened, name="shop.Opened")
    schemas = SchemaSet.load(tmp_path)
    opened = Opened(uuid.uuid4(), "ada", "first account", 100)
    written = AvroCodec(writer_registry, schemas).encode(opened)
    mapper = EventMapper(
        AvroCodec(reader_registry, schemas), [RenameEventType("shop.AccountOpened", "shop.Opened")]
    )
    recorded = RecordedEvent(
        uuid.uuid4(),
        7,
        "account-1",
        1,
        written.event_type,
        written.data,
        b"{}",
        written.schema_id,
        None,
        None,
        datetime.now(UTC),
    )
    event, _ = mapper.from_recorded(recorded)
    assert event == opened


# --- damaged bytes --------------------------------------------------------------------------------------


def test_bytes_from_an_unknown_schema_say_so(bank_codec: AvroCodec) -> None:
    data = SINGLE_OBJECT_MARKER + bytes(8) + b"\x00"
    with pytest.raises(UnknownSchema, match="0000000000000000"):
        bank_codec.decode("bank.TransferCompleted", data, "avro:0000000000000000")


def test_damaged_bytes_are_located_by_the_mapper(bank_codec: AvroCodec) -> None:
    encoded = bank_codec.encode(bank.TransferCompleted(uuid.uuid4(), datetime.now(UTC)))
    recorded = RecordedEvent(
        uuid.uuid4(),
        42,
        "transfer-9",
        3,
        encoded.event_type,
        encoded.data[:-3],
        b"{}",
        encoded.schema_id,
        None,
        None,
        datetime.now(UTC),
    )
    with pytest.raises(DeserializationError) as caught:
        EventMapper(bank_codec).from_recorded(recorded)
    message = str(caught.value)
    assert "bank.TransferCompleted" in message
    assert "transfer-9" in message
    assert "event number 42" in message


@given(data=st.binary(max_size=200), event_type=st.sampled_from(bank.events.names()))
def test_random_bytes_only_ever_raise_codec_errors(
    bank_codec: AvroCodec, data: bytes, event_type: str
) -> None:
    with contextlib.suppress(CodecError):
        bank_codec.decode(event_type, data, "avro:?")


@given(
    event=bank_events,
    position=st.integers(min_value=0),
    mutation=st.sampled_from(["flip", "drop", "insert", "truncate", "append"]),
    byte=st.integers(0, 255),
)
def test_mutated_bytes_decode_or_raise_codec_errors(
    bank_codec: AvroCodec, event: object, position: int, mutation: str, byte: int
) -> None:
    data = bytearray(bank_codec.encode(event).data)
    at = position % len(data)
    if mutation == "flip":
        data[at] ^= byte or 1
    elif mutation == "drop":
        del data[at]
    elif mutation == "insert":
        data.insert(at, byte)
    elif mutation == "truncate":
        del data[at:]
    else:
        data.append(byte)
    event_type = bank_codec.registry.name_of(event)
    try:
        decoded = bank_codec.decode(event_type, bytes(data), "avro:?")
    except CodecError:
        return
    # Some mutations still decode (a flipped bit inside a string); the result is then an event.
    assert type(decoded) is type(event)


def test_a_schema_directory_that_is_missing_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(SchemaFileError, match="no such directory"):
        SchemaSet.load(tmp_path / "nowhere")


def test_the_projects_schemas_load_with_every_released_version(tmp_path: Path) -> None:
    shutil.copytree(SCHEMAS, tmp_path / "schemas")
    schemas = SchemaSet.load(tmp_path / "schemas")
    assert set(schemas.subjects()) == set(bank.events.names())
    for version in schemas:
        assert schemas.by_fingerprint(version.fingerprint) is not None


def test_a_value_out_of_pythons_range_is_a_typed_error(bank_codec: AvroCodec) -> None:
    # Found by the mutation test: a long that Avro carries but no datetime can hold.
    from fastavro import schemaless_writer

    version = bank_codec.schemas.latest("bank.TransferCompleted")
    assert version is not None
    body = io.BytesIO()
    schemaless_writer(body, version.physical, {"transfer_id": str(uuid.uuid4()), "completed_at": 2**62})
    data = SINGLE_OBJECT_MARKER + version.fingerprint + body.getvalue()
    with pytest.raises(DeserializationError, match="does not fit"):
        bank_codec.decode("bank.TransferCompleted", data, f"avro:{version.fingerprint.hex()}")


@given(
    text=st.one_of(
        st.uuids().map(str),
        st.uuids().map(lambda u: str(u).upper()),
        st.uuids().map(lambda u: u.hex),
        st.uuids().map(lambda u: f"{{{u}}}"),
        st.uuids().map(lambda u: f"urn:uuid:{u}"),
        st.text(alphabet="0123456789abcdefABCDEF-_ +x{}:urn", max_size=40),
        st.text(max_size=40),
    )
)
def test_uuid_from_text_agrees_with_uuid_on_any_text(text: str) -> None:
    try:
        expected = uuid.UUID(text)
    except ValueError as err:
        with pytest.raises(ValueError, match=re.escape(str(err))):
            uuid_from_text(text)
        return
    made = uuid_from_text(text)
    assert made == expected
    assert (str(made), hash(made), made.is_safe, made.version) == (
        str(expected),
        hash(expected),
        expected.is_safe,
        expected.version,
    )
