"""The registry of event classes and the stable type names they are stored under.

Example::

    registry = TypeRegistry(namespace="bank")

    @registry.register
    @dataclass(frozen=True)
    class AccountOpened:
        account_id: str

    registry.name_of(AccountOpened)       # "bank.AccountOpened"
    registry.class_for("bank.AccountOpened")  # AccountOpened
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar, overload

from tidings.errors import DuplicateEventType, UnknownEventType

__all__ = ["TypeRegistry"]

T = TypeVar("T")


class TypeRegistry:
    """Maps event classes to type names and back, one to one.

    A type name is written next to every stored event and outlives refactorings, so it defaults to the
    class's ``__qualname__`` (not its module, which moves more often), prefixed by ``namespace`` when
    one is given. Pass ``name=`` to keep the stored name when the class is renamed.
    """

    def __init__(self, namespace: str = "") -> None:
        self.namespace = namespace
        self._classes: dict[str, type] = {}
        self._names: dict[type, str] = {}

    @overload
    def register(self, cls: type[T], name: str | None = None) -> type[T]: ...

    @overload
    def register(self, cls: None = None, name: str | None = None) -> Callable[[type[T]], type[T]]: ...

    def register(
        self, cls: type[T] | None = None, name: str | None = None
    ) -> type[T] | Callable[[type[T]], type[T]]:
        """Register ``cls`` under ``name`` (or its default name) and return it unchanged.

        Works as ``registry.register(cls)``, ``@registry.register`` and ``@registry.register(name=...)``.
        """
        if cls is None:
            return lambda later: self.register(later, name)
        _check_event_class(cls)
        chosen = name if name is not None else self._default_name(cls)
        if not chosen:
            raise ValueError(f"the type name for {cls.__qualname__} is empty: pass a non-empty name=")
        if chosen in self._classes and self._classes[chosen] is not cls:
            raise DuplicateEventType(chosen, self._classes[chosen], cls)
        if cls in self._names and self._names[cls] != chosen:
            raise DuplicateEventType(chosen, cls, cls)
        self._classes[chosen] = cls
        self._names[cls] = chosen
        return cls

    def name_of(self, event_or_class: object) -> str:
        """The type name of an event instance or of an event class."""
        cls = event_or_class if isinstance(event_or_class, type) else type(event_or_class)
        try:
            return self._names[cls]
        except KeyError:
            raise UnknownEventType(cls.__qualname__, cls) from None

    def class_for(self, name: str) -> type:
        """The class registered under ``name``."""
        try:
            return self._classes[name]
        except KeyError:
            raise UnknownEventType(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def names(self) -> list[str]:
        """Every registered type name, in the order of registration."""
        return list(self._classes)

    def _default_name(self, cls: type) -> str:
        if "<locals>" in cls.__qualname__:
            # A class made inside a function has a name that depends on the call site; stored events
            # would carry that accident for ever.
            raise TypeError(
                f"{cls.__qualname__} is defined inside a function, so it has no stable default name: "
                "define it at module level or register it with an explicit name="
            )
        return f"{self.namespace}.{cls.__qualname__}" if self.namespace else cls.__qualname__


def _check_event_class(cls: type) -> None:
    if not isinstance(cls, type) or not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass: events must be declared with @dataclass(frozen=True)")
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise TypeError(
            f"{cls.__qualname__} is a mutable dataclass: events are facts, declare it with "
            "@dataclass(frozen=True)"
        )
