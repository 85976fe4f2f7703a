"""Upcasting: rewriting stored events of an old shape into the shape today's classes expect.

An upcaster works on the decoded JSON document, before any class is built, so it can read types that
no longer exist. Stored events are never changed; each read upcasts them again.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard

from tidings.errors import DeserializationError, UpcastLoop

__all__ = ["MAX_UPCAST_STEPS", "RenameEventType", "Upcaster", "Upcasters"]

MAX_UPCAST_STEPS = 16


class Upcaster(Protocol):
    """Turns a stored document of type ``event_type`` into a newer one.

    ``upcast`` returns the type name and data the event should have now. Returning them unchanged means
    "nothing to do", which is how an upcaster that keeps the type name stops being applied: it must
    notice that its work is done (the field it adds is there, say). Treat ``metadata`` as read-only.
    """

    @property
    def event_type(self) -> str:
        """The stored type name this upcaster handles."""
        ...

    def upcast(self, data: dict[str, Any], metadata: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The (possibly new) type name and data."""
        ...


@dataclass(frozen=True, slots=True)
class RenameEventType:
    """The upcaster for a type stored under ``old`` that is now registered as ``new``."""

    old: str
    new: str

    @property
    def event_type(self) -> str:
        return self.old

    def upcast(self, data: dict[str, Any], metadata: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return self.new, data


class Upcasters:
    """A set of upcasters, applied on read until none of them changes the event any more.

    Several upcasters may handle one type; they are tried in the order given, and the first that
    changes the event wins that step. More than ``max_steps`` changing steps raise ``UpcastLoop``.
    """

    def __init__(self, upcasters: Iterable[Upcaster] = (), *, max_steps: int = MAX_UPCAST_STEPS) -> None:
        self.max_steps = max_steps
        self._by_type: dict[str, list[Upcaster]] = {}
        for upcaster in upcasters:
            if not upcaster.event_type:
                raise ValueError(
                    f"{type(upcaster).__qualname__} has an empty event_type: name the stored type"
                )
            self._by_type.setdefault(upcaster.event_type, []).append(upcaster)

    def __len__(self) -> int:
        return sum(len(group) for group in self._by_type.values())

    def handles(self, event_type: str) -> bool:
        """Whether an upcaster starts from ``event_type``; if none does, such events are read as stored."""
        return event_type in self._by_type

    def upcast(
        self, event_type: str, data: dict[str, Any], metadata: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """The type name and data after every applicable upcaster has run."""
        trail = [event_type]
        for _ in range(self.max_steps + 1):
            changed = self._step(event_type, data, metadata)
            if changed is None:
                return event_type, data
            event_type, data = changed
            if event_type != trail[-1]:
                trail.append(event_type)
        raise UpcastLoop(trail[0], trail, self.max_steps)

    def _step(
        self, event_type: str, data: dict[str, Any], metadata: dict[str, Any]
    ) -> tuple[str, dict[str, Any]] | None:
        for upcaster in self._by_type.get(event_type, ()):
            name = type(upcaster).__qualname__
            try:
                # A copy each: an upcaster that edits in place must not change what it is compared with.
                outcome: object = upcaster.upcast(copy.deepcopy(data), metadata)
            except Exception as err:
                raise DeserializationError(
                    event_type, f"upcaster {name} failed ({err!r}): fix the upcaster"
                ) from err
            if not _is_outcome(outcome):
                raise DeserializationError(
                    event_type, f"upcaster {name} returned {outcome!r}: return a (type_name, data_dict) pair"
                )
            if outcome != (event_type, data):
                return outcome
        return None


def _is_outcome(value: object) -> TypeGuard[tuple[str, dict[str, Any]]]:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], dict)
    )
