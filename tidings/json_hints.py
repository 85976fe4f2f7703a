"""What the JSON mapping reads from type hints: a dataclass's fields and the shape of each hint.

Shared by ``json_encode`` and ``json_decode`` so that both sides accept exactly the same field types.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, TypeAlias

__all__ = [
    "SUPPORTED",
    "Field",
    "JsonValue",
    "ValueProblem",
    "describe",
    "fields_of",
    "is_enum",
    "optional_of",
    "tuple_items",
]

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"

SUPPORTED = (
    "str, int, float, bool, None, list[X], tuple[X, ...], dict[str, X], dataclasses, UUID, datetime, "
    "date, Decimal, Enum, and X | None of these"
)


class ValueProblem(Exception):
    """A value, or a field's type hint, that cannot cross the boundary; ``path`` leads to it."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem

    @classmethod
    def unsupported(cls, hint: Any, path: str) -> ValueProblem:
        """The problem for a field type that the mapping does not know how to carry."""
        return cls(path, f"field type {describe(hint)} is not supported by JsonCodec: use {SUPPORTED}")


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    """One constructor field of a dataclass: its name, resolved type hint, and whether it has a default."""

    name: str
    hint: Any
    required: bool


_FIELDS: dict[type, tuple[Field, ...]] = {}


def fields_of(cls: type) -> tuple[Field, ...]:
    """The fields passed to ``cls``'s constructor (``init=False`` ones are derived, so not stored)."""
    found = _FIELDS.get(cls)
    if found is None:
        # Resolving hints is slow next to encoding a small event; a class's fields never change.
        found = _FIELDS[cls] = _resolve_fields(cls)
    return found


def _resolve_fields(cls: type) -> tuple[Field, ...]:
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError) as err:
        raise ValueProblem(
            cls.__qualname__,
            f"cannot resolve its field types ({err}): define the types it refers to at module level",
        ) from err
    missing = dataclasses.MISSING
    return tuple(
        Field(f.name, hints[f.name], f.default is missing and f.default_factory is missing)
        for f in dataclasses.fields(cls)
        if f.init
    )


def optional_of(hint: Any, path: str) -> Any:
    """The ``X`` of ``X | None`` (or ``Optional[X]``), or None when ``hint`` is not a union."""
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return None
    members = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(members) != 1:
        # JSON cannot tell which member of `int | str`, or of `UUID | str`, a value was written as.
        raise ValueProblem.unsupported(hint, path)
    return members[0]


def tuple_items(items: typing.Sized, hint: Any, path: str) -> list[Any]:
    """The type hint of each item of a tuple, from ``tuple[X, ...]`` or ``tuple[X, Y, Z]``."""
    args = typing.get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:
        return [args[0]] * len(items)
    if not args:
        raise ValueProblem.unsupported(hint, path)
    if len(items) != len(args):
        raise ValueProblem(path, f"expected {len(args)} items for {describe(hint)}, got {len(items)}")
    return list(args)


def is_enum(hint: Any) -> bool:
    """Whether ``hint`` is an Enum class."""
    return isinstance(hint, type) and issubclass(hint, enum.Enum)


def describe(hint: Any) -> str:
    """A short, readable name for a type hint, for messages."""
    return hint.__qualname__ if isinstance(hint, type) else str(hint).replace("typing.", "")
