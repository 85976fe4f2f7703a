"""Avro schema compatibility: the spec's resolution rules, the modes of `check`, agreement with fastavro."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from hypothesis import given
from hypothesis import strategies as st

from tests.tidings.avro_support import SIMPLE, avro_values, enum, field, fixed, record_schemas
from tidings.avro.compatibility import Compatibility, Incompatibility, Schema, can_read, check

# --- Building schemas ------------------------------------------------------------------------------------


def record(*fields: dict[str, Any], name: str = "AccountOpened", **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "bank", "fields": list(fields), **extra}


def with_field(type_: Any, **extra: Any) -> dict[str, Any]:
    """bank.AccountOpened with one field, ``value``, of the given type."""
    return record(field("value", type_, **extra))


def paths(problems: list[Incompatibility]) -> list[str]:
    return [p.path for p in problems]


def only(problems: list[Incompatibility]) -> Incompatibility:
    assert len(problems) == 1, problems
    return problems[0]


# --- Primitives and promotions ---------------------------------------------------------------------------

PRIMITIVES = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"]
PROMOTIONS = [
    ("int", "long"),
    ("int", "float"),
    ("int", "double"),
    ("long", "float"),
    ("long", "double"),
    ("float", "double"),
    ("string", "bytes"),
    ("bytes", "string"),
]


@pytest.mark.parametrize("name", PRIMITIVES)
def test_a_primitive_reads_itself(name: str) -> None:
    assert can_read(name, name) == []
    assert can_read({"type": name}, name) == []


@pytest.mark.parametrize(("writer", "reader"), PROMOTIONS)
def test_a_reader_promotes_the_types_the_spec_allows(writer: str, reader: str) -> None:
    assert can_read(with_field(reader), with_field(writer)) == []


@pytest.mark.parametrize(("writer", "reader"), [(r, w) for w, r in PROMOTIONS if (r, w) not in PROMOTIONS])
def test_promotions_do_not_run_backwards(writer: str, reader: str) -> None:
    problem = only(can_read(with_field(reader), with_field(writer)))
    assert problem.path == "bank.AccountOpened.value"
    assert f"was {writer}, is now {reader}" in problem.problem
    assert "add a new event type instead of changing this field's type" in problem.problem


@pytest.mark.parametrize(("writer", "reader"), [("int", "string"), ("boolean", "int"), ("null", "long")])
def test_unrelated_primitives_are_a_type_mismatch(writer: str, reader: str) -> None:
    problem = only(can_read(with_field(reader), with_field(writer)))
    assert problem.path == "bank.AccountOpened.value"
    assert f"was {writer}, is now {reader}" in problem.problem
    assert f"{writer} cannot be read as {reader}" in problem.problem


def test_a_mismatch_at_the_top_speaks_of_the_type_not_a_field() -> None:
    problem = only(can_read("string", "int"))
    assert problem.path == "<root>"
    assert "instead of changing the type" in problem.problem


# --- Logical types ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reader", "writer", "readable"),
    [
        ({"type": "long", "logicalType": "timestamp-millis"}, "long", True),
        ("long", {"type": "long", "logicalType": "timestamp-micros"}, True),
        ({"type": "long", "logicalType": "time-micros"}, {"type": "int", "logicalType": "time-millis"}, True),
        ({"type": "string", "logicalType": "uuid"}, {"type": "int", "logicalType": "date"}, False),
    ],
)
def test_logical_types_other_than_decimal_leave_it_to_the_underlying_type(
    reader: Any, writer: Any, readable: bool
) -> None:
    assert (can_read(reader, writer) == []) is readable


def decimal(precision: int, scale: int, **extra: Any) -> dict[str, Any]:
    return {"type": "bytes", "logicalType": "decimal", "precision": precision, "scale": scale, **extra}


def test_a_decimal_reads_one_of_the_same_precision_and_scale() -> None:
    assert can_read(with_field(decimal(10, 2)), with_field(decimal(10, 2))) == []
    fixed = {"type": "fixed", "name": "Amount", "size": 8, "logicalType": "decimal", "precision": 12}
    assert can_read(with_field(fixed), with_field({**fixed, "scale": 0})) == []


@pytest.mark.parametrize(
    ("reader", "writer"),
    [((12, 2), (10, 2)), ((10, 2), (12, 2)), ((12, 2), (12, 4)), ((12, 4), (12, 2))],
)
def test_a_decimal_does_not_read_another_precision_or_scale(
    reader: tuple[int, int], writer: tuple[int, int]
) -> None:
    problem = only(can_read(with_field(decimal(*reader)), with_field(decimal(*writer))))
    assert problem.path == "bank.AccountOpened.value"
    assert f"was decimal{writer}, is now decimal{reader}" in problem.problem
    assert "keep the precision and scale" in problem.problem


def test_bytes_that_become_a_decimal_change_meaning() -> None:
    problem = only(can_read(with_field(decimal(10, 2)), with_field("bytes")))
    assert "was not a decimal, is now decimal(10, 2)" in problem.problem


def test_an_invalid_decimal_counts_as_its_underlying_type() -> None:
    invalid = {"type": "bytes", "logicalType": "decimal", "precision": 2, "scale": 5}
    assert can_read(with_field(invalid), with_field("bytes")) == []


def test_fixed_decimals_are_compared_too() -> None:
    fixed = {
        "type": "fixed",
        "name": "Amount",
        "size": 8,
        "logicalType": "decimal",
        "precision": 12,
        "scale": 2,
    }
    problem = only(can_read(with_field({**fixed, "scale": 3}), with_field(fixed)))
    assert "was decimal(12, 2), is now decimal(12, 3)" in problem.problem


# --- Records ---------------------------------------------------------------------------------------------


def test_a_field_added_with_a_default_reads_old_data() -> None:
    old = record(field("id", "string"))
    new = record(field("id", "string"), field("owner", "string", default=""))
    assert can_read(new, old) == []


def test_a_field_added_without_a_default_is_reported_with_the_fix() -> None:
    old = record(field("id", "string"))
    new = record(field("id", "string"), field("owner", "string"))
    problem = only(can_read(new, old))
    assert problem.path == "bank.AccountOpened.owner"
    assert "field 'owner' was added without a default" in problem.problem
    assert "give the field a default" in problem.problem


def test_fields_the_reader_lacks_are_skipped() -> None:
    assert can_read(record(field("id", "string")), record(field("id", "string"), field("gone", "int"))) == []


def test_field_order_does_not_matter() -> None:
    one = record(field("a", "int"), field("b", "string"))
    other = record(field("b", "string"), field("a", "int"))
    assert can_read(one, other) == []


def test_a_field_renamed_with_an_alias_reads_the_old_name() -> None:
    old = record(field("owner", "string"))
    assert can_read(record(field("holder", "string", aliases=["owner"])), old) == []
    problem = only(can_read(record(field("holder", "string")), old))
    assert problem.path == "bank.AccountOpened.holder"
    assert "added without a default" in problem.problem


def test_a_same_named_writer_field_wins_over_an_alias() -> None:
    # "holder" is filled from the writer's "holder" (a string), not from its "owner" (an int).
    writer = record(field("owner", "int"), field("holder", "string"))
    assert can_read(record(field("holder", "string", aliases=["owner"])), writer) == []


def test_a_renamed_record_needs_the_old_name_among_its_aliases() -> None:
    old = record(name="AccountOpened")
    problem = only(can_read(record(name="AccountCreated"), old))
    assert problem.path == "bank.AccountCreated"
    assert "was record bank.AccountOpened, is now record bank.AccountCreated" in problem.problem
    assert "aliases" in problem.problem
    assert can_read(record(name="AccountCreated", aliases=["AccountOpened"]), old) == []
    assert can_read(record(name="AccountCreated", aliases=["bank.AccountOpened"]), old) == []


def test_record_names_are_compared_unqualified() -> None:
    moved = {**record(), "namespace": "banking"}
    assert can_read(moved, record()) == []


def test_a_problem_inside_a_nested_record_names_the_whole_path() -> None:
    old = record(field("owner", {"type": "record", "name": "Owner", "fields": [field("name", "string")]}))
    new = record(field("owner", {"type": "record", "name": "Owner", "fields": [field("name", "int")]}))
    problem = only(can_read(new, old))
    assert problem.path == "bank.AccountOpened.owner.name"
    assert "was string, is now int" in problem.problem


def test_every_problem_is_reported_not_just_the_first() -> None:
    old = record(field("a", "int"), field("b", "int"))
    new = record(field("a", "string"), field("b", "boolean"), field("c", "int"))
    assert paths(can_read(new, old)) == [
        "bank.AccountOpened.a",
        "bank.AccountOpened.b",
        "bank.AccountOpened.c",
    ]


def linked_list(*extra_fields: dict[str, Any]) -> dict[str, Any]:
    return record(field("value", "int"), *extra_fields, field("next", ["null", "Node"]), name="Node")


def test_a_recursive_record_reads_itself() -> None:
    assert can_read(linked_list(), linked_list()) == []


def test_a_problem_in_a_recursive_record_is_reported_once() -> None:
    problem = only(can_read(linked_list(field("label", "string")), linked_list()))
    assert problem.path == "bank.Node.label"


def test_mutually_recursive_records_terminate() -> None:
    def tree(leaf_type: str) -> dict[str, Any]:
        branch = {
            "type": "record",
            "name": "Branch",
            "fields": [field("children", {"type": "array", "items": "Tree"})],
        }
        return record(field("leaf", ["null", leaf_type]), field("branch", ["null", branch]), name="Tree")

    assert can_read(tree("long"), tree("int")) == []
    problem = only(can_read(tree("int"), tree("long")))
    assert problem.path == "bank.Tree.leaf"


# --- Enums -----------------------------------------------------------------------------------------------


def test_an_enum_with_more_symbols_reads_one_with_fewer() -> None:
    assert can_read(with_field(enum("A", "B", "C")), with_field(enum("A", "B"))) == []


def test_an_enum_that_lost_a_symbol_is_reported_at_its_symbols() -> None:
    problem = only(can_read(with_field(enum("A", "C")), with_field(enum("A", "B", "C", "D"))))
    assert problem.path == "bank.AccountOpened.value.<enum>"
    assert "symbols B, D were removed from enum bank.Kind" in problem.problem
    assert "keep the old symbols or give the enum a default" in problem.problem


def test_an_enum_default_reads_unknown_symbols() -> None:
    assert can_read(with_field(enum("A", "OTHER", default="OTHER")), with_field(enum("A", "B"))) == []


def test_a_renamed_enum_needs_an_alias() -> None:
    problem = only(can_read(with_field(enum("A", name="Sort")), with_field(enum("A"))))
    assert problem.path == "bank.AccountOpened.value"
    assert "was enum bank.Kind, is now enum bank.Sort" in problem.problem
    assert can_read(with_field(enum("A", name="Sort", aliases=["Kind"])), with_field(enum("A"))) == []


# --- Fixed, arrays, maps ---------------------------------------------------------------------------------


def test_fixed_needs_the_same_name_and_size() -> None:
    assert can_read(with_field(fixed(16)), with_field(fixed(16))) == []
    resized = only(can_read(with_field(fixed(32)), with_field(fixed(16))))
    assert resized.path == "bank.AccountOpened.value"
    assert "was 16 bytes long, is now 32" in resized.problem
    renamed = only(can_read(with_field(fixed(16, "Digest")), with_field(fixed(16))))
    assert "was fixed bank.Hash (16 bytes), is now fixed bank.Digest (16 bytes)" in renamed.problem


def test_arrays_compare_their_items() -> None:
    assert (
        can_read(
            with_field({"type": "array", "items": "long"}), with_field({"type": "array", "items": "int"})
        )
        == []
    )
    problem = only(
        can_read(
            with_field({"type": "array", "items": "int"}), with_field({"type": "array", "items": "long"})
        )
    )
    assert problem.path == "bank.AccountOpened.value.<items>"
    assert "was long, is now int" in problem.problem


def test_maps_compare_their_values() -> None:
    assert (
        can_read(
            with_field({"type": "map", "values": "double"}), with_field({"type": "map", "values": "float"})
        )
        == []
    )
    problem = only(
        can_read(
            with_field({"type": "map", "values": "int"}), with_field({"type": "map", "values": "string"})
        )
    )
    assert problem.path == "bank.AccountOpened.value.<values>"
    assert "was string, is now int" in problem.problem


def test_an_array_is_not_a_map() -> None:
    problem = only(can_read({"type": "map", "values": "int"}, {"type": "array", "items": "int"}))
    assert "was array of int, is now map of int" in problem.problem


# --- Unions ----------------------------------------------------------------------------------------------


def test_a_union_reads_a_union_with_fewer_branches() -> None:
    assert can_read(with_field(["null", "string", "int"]), with_field(["string", "null"])) == []


def test_a_union_that_lost_a_branch_names_it() -> None:
    problem = only(can_read(with_field(["null", "string"]), with_field(["null", "string", "int"])))
    assert problem.path == "bank.AccountOpened.value"
    assert "the int branch was removed from the union" in problem.problem
    assert "keep the branch" in problem.problem


def test_a_union_branch_may_read_by_promotion() -> None:
    assert can_read(with_field(["null", "long"]), with_field(["null", "int"])) == []
    assert can_read(with_field(["null", "double"]), with_field("int")) == []


def test_a_union_reads_a_plain_type_it_has_a_branch_for() -> None:
    assert can_read(with_field(["null", "string"]), with_field("string")) == []
    problem = only(can_read(with_field(["null", "int"]), with_field("string")))
    assert problem.path == "bank.AccountOpened.value"
    assert "has no branch that can read string" in problem.problem
    assert "keep a string branch" in problem.problem


def test_a_plain_type_reads_a_union_only_if_it_reads_every_branch() -> None:
    assert can_read(with_field("long"), with_field(["int", "long"])) == []
    problem = only(can_read(with_field("string"), with_field(["null", "string"])))
    assert problem.path == "bank.AccountOpened.value"
    assert "its null branch cannot be read as string" in problem.problem


def test_a_problem_inside_a_union_branch_is_reported_with_its_path() -> None:
    def owner(*fields: dict[str, Any]) -> dict[str, Any]:
        return with_field(["null", {"type": "record", "name": "Owner", "fields": list(fields)}])

    problem = only(
        can_read(owner(field("name", "string"), field("age", "int")), owner(field("name", "string")))
    )
    assert problem.path == "bank.AccountOpened.value.age"
    assert "added without a default" in problem.problem


# --- Names and namespaces --------------------------------------------------------------------------------


def test_a_named_type_may_be_referenced_later_by_short_or_full_name() -> None:
    money = {"type": "record", "name": "Money", "fields": [field("cents", "long")]}
    by_short = record(field("amount", money), field("fee", "Money"))
    by_full = record(field("amount", money), field("fee", "bank.Money"))
    assert can_read(by_short, by_full) == []
    assert can_read(by_full, by_short) == []


def test_a_nested_type_without_a_namespace_takes_the_enclosing_one() -> None:
    inner = {"type": "record", "name": "Inner", "fields": [field("x", "int")]}
    schema = {
        "type": "record",
        "name": "Outer",
        "namespace": "a.b",
        "fields": [field("i", inner), field("j", "a.b.Inner")],
    }
    assert can_read(schema, schema) == []
    with pytest.raises(ValueError, match="Inner"):
        can_read({**schema, "fields": [field("i", inner), field("j", "c.Inner")]}, schema)


def test_names_are_resolved_in_each_schema_separately() -> None:
    # Both define bank.Money; only the reader's own definition counts for the reader's reference.
    def uses_money(cents_type: str) -> dict[str, Any]:
        money = {"type": "record", "name": "Money", "fields": [field("cents", cents_type)]}
        return record(field("amount", money), field("fee", "Money"))

    problems = can_read(uses_money("int"), uses_money("long"))
    assert paths(problems) == ["bank.AccountOpened.amount.cents", "bank.AccountOpened.fee.cents"]


def test_an_unknown_name_is_an_error_not_an_incompatibility() -> None:
    with pytest.raises(ValueError, match="Nowhere"):
        can_read(with_field("Nowhere"), with_field("int"))


def test_a_name_defined_twice_is_an_error() -> None:
    twice = record(field("a", enum("X")), field("b", enum("Y")))
    with pytest.raises(ValueError, match="defined twice"):
        can_read(twice, twice)


def test_an_incompatibility_prints_as_path_and_problem() -> None:
    assert str(Incompatibility("bank.X.y", "it broke")) == "bank.X.y: it broke"


# --- check and its modes ---------------------------------------------------------------------------------

V1 = record(field("id", "string"))
V2 = record(field("id", "string"), field("owner", "string", default=""))
# Drops "id", which V1 has without a default, and keeps "owner", which V2 gives a default.
V3 = record(field("owner", "string", default=""))
# Needs "name", which only V2 (not V1) wrote.
V3_NEEDS_NAME = record(field("id", "string"), field("name", "string", aliases=["owner"]))


def test_no_released_versions_means_nothing_to_check() -> None:
    for mode in Compatibility:
        assert check(V1, [], mode) == []


def test_none_checks_nothing() -> None:
    assert check("int", ["string"], Compatibility.NONE) == []


def test_backward_compares_with_the_last_release_only() -> None:
    assert check(V3_NEEDS_NAME, [V1, V2], Compatibility.BACKWARD) == []


def test_backward_transitive_compares_with_every_release() -> None:
    problem = only(check(V3_NEEDS_NAME, [V1, V2], Compatibility.BACKWARD_TRANSITIVE))
    assert problem.path == "bank.AccountOpened.name"
    assert problem.problem.startswith(
        "BACKWARD against version 1: events written with version 1 could not be read with the new schema: "
        "field 'name' was added without a default"
    )


def test_forward_compares_with_the_last_release_only() -> None:
    problem = only(check(V3, [V2, V1], Compatibility.FORWARD))
    assert problem.path == "bank.AccountOpened.id"
    assert problem.problem.startswith(
        "FORWARD against version 2: events written with the new schema could not be read with version 2: "
        "field 'id' was removed"
    )
    assert check(V3, [V1, V2], Compatibility.FORWARD) != []
    # V2 reads V3 data if V2 alone had a default for id.
    with_default = record(field("id", "string", default=""), field("owner", "string", default=""))
    assert check(V3, [V1, with_default], Compatibility.FORWARD) == []


def test_forward_transitive_compares_with_every_release() -> None:
    with_default = record(field("id", "string", default=""), field("owner", "string", default=""))
    problem = only(check(V3, [V1, with_default], Compatibility.FORWARD_TRANSITIVE))
    assert problem.problem.startswith("FORWARD against version 1:")


def test_full_checks_both_directions() -> None:
    old = with_field("int")
    new = record(field("value", "long"), field("extra", "string"))
    problems = check(new, [with_field("string"), old], Compatibility.FULL)
    assert [(p.path, p.problem.split(":")[0]) for p in problems] == [
        ("bank.AccountOpened.extra", "BACKWARD against version 2"),
        ("bank.AccountOpened.value", "FORWARD against version 2"),
    ]


def test_full_transitive_checks_both_directions_against_every_release() -> None:
    problems = check(
        with_field("long"), [with_field("string"), with_field("int")], Compatibility.FULL_TRANSITIVE
    )
    assert [p.problem.split(":")[0] for p in problems] == [
        "BACKWARD against version 1",
        "FORWARD against version 1",
        "FORWARD against version 2",
    ]


# --- Scenarios every project meets ----------------------------------------------------------------------


def ok(new: Schema, old: Schema, mode: Compatibility) -> bool:
    return check(new, [old], mode) == []


def test_scenario_field_added_with_a_default() -> None:
    old, new = V1, V2
    assert ok(new, old, Compatibility.BACKWARD)
    assert ok(new, old, Compatibility.FORWARD)


def test_scenario_field_added_without_a_default() -> None:
    new = record(field("id", "string"), field("owner", "string"))
    assert not ok(new, V1, Compatibility.BACKWARD)
    assert ok(new, V1, Compatibility.FORWARD)


def test_scenario_field_removed() -> None:
    old = record(field("id", "string"), field("note", "string"))
    new = record(field("id", "string"))
    assert ok(new, old, Compatibility.BACKWARD)
    problem = only(check(new, [old], Compatibility.FORWARD))
    assert problem.path == "bank.AccountOpened.note"
    assert "keep the field" in problem.problem
    old_with_default = record(field("id", "string"), field("note", "string", default=""))
    assert ok(new, old_with_default, Compatibility.FORWARD)


def test_scenario_field_renamed_with_an_alias() -> None:
    old = record(field("owner", "string"))
    new = record(field("holder", "string", aliases=["owner"]))
    assert ok(new, old, Compatibility.BACKWARD)


def test_scenario_int_promoted_to_long() -> None:
    old, new = with_field("int"), with_field("long")
    assert ok(new, old, Compatibility.BACKWARD)
    problem = only(check(new, [old], Compatibility.FORWARD))
    assert "was int, is now long, and long cannot be read as int" in problem.problem


def test_scenario_enum_symbol_added() -> None:
    old, new = with_field(enum("A", "B")), with_field(enum("A", "B", "C"))
    assert ok(new, old, Compatibility.BACKWARD)
    problem = only(check(new, [old], Compatibility.FORWARD))
    assert problem.path == "bank.AccountOpened.value.<enum>"
    assert "symbol C was added to enum bank.Kind" in problem.problem
    old_with_default = with_field(enum("A", "B", default="A"))
    assert ok(with_field(enum("A", "B", "C", default="A")), old_with_default, Compatibility.FULL)


def test_scenario_union_with_null_added() -> None:
    old, new = with_field("string"), with_field(["null", "string"], default=None)
    assert ok(new, old, Compatibility.BACKWARD)
    problem = only(check(new, [old], Compatibility.FORWARD))
    assert "widening" in problem.problem


# --- Properties ------------------------------------------------------------------------------------------

# The spec promotes bytes to string whatever they hold, and fastavro then decodes them: UTF-8 only.
UTF8_BYTES = st.text(max_size=4).map(str.encode)

PROMOTABLE = {
    "int": ["long", "float", "double"],
    "long": ["float", "double"],
    "float": ["double"],
    "string": ["bytes"],
    "bytes": ["string"],
}


# Field types with a default value that fastavro hands back as it is.
DEFAULTED = [
    ("int", 0),
    ("long", 7),
    ("string", "x"),
    ("boolean", True),
    ("double", 1.5),
    (["null", "string"], None),
    ({"type": "array", "items": "int"}, []),
    ({"type": "map", "values": "long"}, {}),
    (enum("P", "Q", name="Added"), "Q"),
]


def _fields_where(schema: dict[str, Any], test: Callable[[Any], bool]) -> list[int]:
    return [i for i, f in enumerate(schema["fields"]) if test(f["type"])]


def _is_enum(t: Any) -> bool:
    return isinstance(t, dict) and t["type"] == "enum"


@st.composite
def mutations(draw: st.DrawFn, schema: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A named change to ``schema``'s top-level fields, and the changed schema."""
    fields = [dict(f) for f in schema["fields"]]
    promotable = _fields_where(schema, lambda t: isinstance(t, str) and t in PROMOTABLE)
    enums = _fields_where(schema, _is_enum)
    shrinkable = _fields_where(schema, lambda t: _is_enum(t) and len(t["symbols"]) > 1)
    widenable = _fields_where(schema, lambda t: not isinstance(t, list))
    applicable = ["add_with_default", "add_without_default", "drop"]
    applicable += ["promote"] * bool(promotable) + ["add_symbol"] * bool(enums)
    applicable += ["remove_symbol"] * bool(shrinkable) + ["widen_to_union"] * bool(widenable)
    mutation = draw(st.sampled_from(applicable))
    if mutation == "add_with_default":
        type_, default = draw(st.sampled_from(DEFAULTED))
        fields.append(field("added", type_, default=default))
    elif mutation == "add_without_default":
        fields.append(field("added", draw(st.sampled_from(SIMPLE))))
    elif mutation == "drop":
        del fields[draw(st.integers(0, len(fields) - 1))]
    elif mutation == "promote":
        i = draw(st.sampled_from(promotable))
        fields[i]["type"] = draw(st.sampled_from(PROMOTABLE[fields[i]["type"]]))
    elif mutation == "add_symbol":
        i = draw(st.sampled_from(enums))
        fields[i]["type"] = {**fields[i]["type"], "symbols": [*fields[i]["type"]["symbols"], "NEW"]}
    elif mutation == "remove_symbol":
        i = draw(st.sampled_from(shrinkable))
        # The last symbol is never the generated default (the first), so the enum stays valid.
        fields[i]["type"] = {**fields[i]["type"], "symbols": fields[i]["type"]["symbols"][:-1]}
    else:
        i = draw(st.sampled_from(widenable))
        fields[i]["type"] = draw(st.sampled_from([["null", fields[i]["type"]], [fields[i]["type"], "null"]]))
    return mutation, {**schema, "fields": fields}


def round_trip(datum: Any, writer: Schema, reader: Schema) -> Any:
    buffer = io.BytesIO()
    schemaless_writer(buffer, parse_schema(writer), datum)
    buffer.seek(0)
    return schemaless_reader(buffer, parse_schema(writer), parse_schema(reader))


@given(record_schemas())
def test_every_generated_schema_reads_itself(schema: dict[str, Any]) -> None:
    assert can_read(schema, schema) == []
    assert check(schema, [schema, schema], Compatibility.FULL_TRANSITIVE) == []


# Which mutations keep each direction readable, whatever the schema they are made to.
BACKWARD_SAFE = {"add_with_default", "drop", "promote", "add_symbol", "widen_to_union"}
FORWARD_SAFE = {"add_with_default", "add_without_default"}


@given(st.data())
def test_what_is_called_readable_fastavro_reads(data: st.DataObject) -> None:
    original = data.draw(record_schemas(), label="original")
    mutation, mutated = data.draw(mutations(original), label="mutated")
    for reader, writer in ((mutated, original), (original, mutated)):
        if can_read(reader, writer):
            continue
        datum = data.draw(avro_values(writer, binary=UTF8_BYTES), label="datum")
        read = round_trip(datum, writer, reader)
        assert set(read) == {f["name"] for f in reader["fields"]}
        unchanged = [f["name"] for f in reader["fields"] if f in writer["fields"]]
        assert {name: read[name] for name in unchanged} == {name: datum[name] for name in unchanged}

    if mutation in BACKWARD_SAFE:
        assert can_read(mutated, original) == []
    if mutation in FORWARD_SAFE:
        assert can_read(original, mutated) == []
    if mutation == "add_without_default":
        assert paths(can_read(mutated, original)) == ["gen.R0.added"]
        old_datum = data.draw(avro_values(original, binary=UTF8_BYTES), label="old datum")
        with pytest.raises(SchemaResolutionError, match="added"):
            round_trip(old_datum, original, mutated)
