"""The type registry: stable names for event classes, one to one."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tidings import CodecError, DuplicateEventType, TypeRegistry, UnknownEventType

from .events import AccountOpened, Address, Everything


@dataclass(frozen=True)
class Outer:
    @dataclass(frozen=True)
    class Inner:
        value: int


@dataclass
class Mutable:
    value: int


class NotADataclass:
    pass


def test_the_default_name_is_the_qualified_class_name() -> None:
    registry = TypeRegistry()
    registry.register(AccountOpened)
    registry.register(Outer.Inner)
    assert registry.name_of(AccountOpened) == "AccountOpened"
    assert registry.name_of(Outer.Inner) == "Outer.Inner"
    assert registry.class_for("Outer.Inner") is Outer.Inner


def test_a_namespace_prefixes_default_names_but_not_explicit_ones() -> None:
    registry = TypeRegistry(namespace="bank")
    registry.register(AccountOpened)
    registry.register(Everything, name="kitchen-sink/v1")
    assert registry.name_of(AccountOpened) == "bank.AccountOpened"
    assert registry.name_of(Everything) == "kitchen-sink/v1"
    assert registry.names() == ["bank.AccountOpened", "kitchen-sink/v1"]


def test_register_works_as_a_bare_decorator_and_with_a_name() -> None:
    registry = TypeRegistry()

    @registry.register(name="Deposited")
    @dataclass(frozen=True)
    class Deposit:
        amount: int

    plain = registry.register(Outer)
    assert plain is Outer
    assert registry.class_for("Deposited") is Deposit
    assert "Outer" in registry
    assert "Deposit" not in registry


def test_name_of_accepts_an_instance_or_its_class() -> None:
    registry = TypeRegistry()
    registry.register(Outer.Inner, name="inner")
    assert registry.name_of(Outer.Inner(1)) == registry.name_of(Outer.Inner) == "inner"


def test_registering_the_same_class_under_the_same_name_again_is_harmless() -> None:
    registry = TypeRegistry()
    registry.register(AccountOpened)
    registry.register(AccountOpened)
    assert registry.names() == ["AccountOpened"]


def test_a_name_taken_by_another_class_is_refused() -> None:
    registry = TypeRegistry()
    registry.register(AccountOpened, name="Opened")
    with pytest.raises(DuplicateEventType, match=r"already taken by .*AccountOpened.*another name") as caught:
        registry.register(Everything, name="Opened")
    assert caught.value.existing is AccountOpened
    assert caught.value.new is Everything
    assert registry.class_for("Opened") is AccountOpened


def test_one_class_under_two_names_is_refused() -> None:
    registry = TypeRegistry()
    registry.register(AccountOpened)
    with pytest.raises(DuplicateEventType, match=r"already registered.*upcaster"):
        registry.register(AccountOpened, name="AccountOpenedV2")
    assert registry.names() == ["AccountOpened"]


def test_unknown_names_and_classes_say_how_to_fix_them() -> None:
    registry = TypeRegistry()
    with pytest.raises(UnknownEventType, match=r"'Closed'.*register.*upcaster") as by_name:
        registry.class_for("Closed")
    assert by_name.value.name == "Closed"
    with pytest.raises(UnknownEventType, match=r"AccountOpened is not a registered event class.*register"):
        registry.name_of(AccountOpened(*[None] * 4))  # type: ignore[arg-type]
    assert isinstance(by_name.value, CodecError)
    assert isinstance(by_name.value, LookupError)


@pytest.mark.parametrize("cls", [Mutable, NotADataclass])
def test_only_frozen_dataclasses_can_be_events(cls: type) -> None:
    with pytest.raises(TypeError, match=r"@dataclass\(frozen=True\)"):
        TypeRegistry().register(cls)


def test_a_class_defined_in_a_function_needs_an_explicit_name() -> None:
    @dataclass(frozen=True)
    class Local:
        value: int

    registry = TypeRegistry()
    with pytest.raises(TypeError, match=r"no stable default name.*name="):
        registry.register(Local)
    registry.register(Local, name="Local")
    assert registry.class_for("Local") is Local


def test_an_empty_name_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        TypeRegistry().register(Address, name="")
