"""Errors raised at the codec boundary, where domain events become bytes for the store and back.

    CodecError
    ├── SerializationError    an event (or metadata) holds a value JSON cannot carry; names the field path
    ├── DeserializationError  stored bytes cannot be decoded, or miss or add fields; names the event type
    │   └── UnknownSchema     the bytes name a schema (fingerprint or registry id) nobody knows
    ├── UnknownEventType      no class is registered under a type name (or a class has no name)
    ├── DuplicateEventType    a type name is taken twice, or one class is registered under two names
    ├── UpcastLoop            the upcasters kept changing an event for more than 16 steps
    ├── SchemaFileError       a file under schemas/ is misplaced, not JSON or not Avro
    └── SchemaMismatch        an event class and its Avro schema disagree (found at start-up)

Errors raised while reading a recorded event also say which stream and event number it came from.
"""

from __future__ import annotations

from typing import Any, Self, TypeVar

__all__ = [
    "CodecError",
    "DeserializationError",
    "DuplicateEventType",
    "SchemaFileError",
    "SchemaMismatch",
    "SerializationError",
    "UnknownEventType",
    "UnknownSchema",
    "UpcastLoop",
]


class CodecError(Exception):
    """Base of every error raised while encoding, decoding or upcasting events.

    Attributes:
        stream_id: the stream of the recorded event being read, once known.
        stream_version: that event's version within its stream, once known.
        event_number: that event's place in the global order, when the store has given it one.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.stream_id: str | None = None
        self.stream_version: int | None = None
        self.event_number: int | None = None

    def locate(self, stream_id: str, stream_version: int, event_number: int | None) -> Self:
        """Record which stored event the error concerns, so that an operator can find it."""
        self.stream_id, self.stream_version, self.event_number = stream_id, stream_version, event_number
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # Subclasses take other arguments than the message, so rebuild from the state instead: the
        # errors then cross process boundaries (multiprocessing, pickled test reports) intact.
        return _restore, (type(self), self.message), self.__dict__

    def __str__(self) -> str:
        if self.stream_id is None:
            return self.message
        number = "not yet numbered" if self.event_number is None else f"event number {self.event_number}"
        return f"{self.message} [stream {self.stream_id!r} version {self.stream_version}, {number}]"


class SerializationError(CodecError, ValueError):
    """A value cannot be encoded; ``where`` is the path to it, such as ``OpenAccount.owner.address``."""

    def __init__(self, where: str, problem: str) -> None:
        self.where, self.problem = where, problem
        super().__init__(f"{where}: {problem}")


class DeserializationError(CodecError, ValueError):
    """Stored bytes cannot be turned back into an event; ``where`` starts with the event type."""

    def __init__(self, where: str, problem: str) -> None:
        self.where, self.problem = where, problem
        super().__init__(f"{where}: {problem}")


class UnknownSchema(DeserializationError):
    """The stored bytes were written with a schema this codec cannot find."""


class SchemaFileError(CodecError, ValueError):
    """A schema file cannot be used; ``where`` is its path."""

    def __init__(self, where: str, problem: str) -> None:
        self.where, self.problem = where, problem
        super().__init__(f"{where}: {problem}")


class SchemaMismatch(CodecError, TypeError):
    """An event class and the latest version of its schema disagree; ``differences`` lists how."""

    def __init__(self, event_type: str, differences: list[str]) -> None:
        self.event_type, self.differences = event_type, differences
        listed = "\n  - ".join(differences)
        super().__init__(
            f"the class registered as {event_type!r} does not match its schema:\n  - {listed}\n"
            "change the class, or add a new schema version (schemas/<namespace>/<Name>/vN.avsc) and check "
            "it with `tidings schemas check`"
        )


class UnknownEventType(CodecError, LookupError):
    """No class is registered under ``name``, or the class ``cls`` was never registered."""

    def __init__(self, name: str, cls: type | None = None) -> None:
        self.name, self.cls = name, cls
        if cls is not None:
            message = (
                f"{cls.__module__}.{cls.__qualname__} is not a registered event class: decorate it with "
                "@registry.register or call registry.register(cls) before encoding it"
            )
        else:
            message = (
                f"no event class is registered as {name!r}: register the class that should read it "
                f"(registry.register(cls, name={name!r})), or, if the type was renamed or dropped, add an "
                f"upcaster for {name!r} that turns it into a registered type"
            )
        super().__init__(message)


class DuplicateEventType(CodecError, ValueError):
    """A registration clashes with an earlier one; type names and classes map one to one."""

    def __init__(self, name: str, existing: type, new: type) -> None:
        self.name, self.existing, self.new = name, existing, new
        if existing is new:
            message = (
                f"{_dotted(new)} is already registered, under another name than {name!r}: register each "
                "class once, and read events stored under its old name with an upcaster that renames them"
            )
        else:
            message = (
                f"type name {name!r} is already taken by {_dotted(existing)}: register {_dotted(new)} "
                "with another name (register(cls, name=...)) or under another registry namespace"
            )
        super().__init__(message)


class UpcastLoop(CodecError):
    """Upcasting never settled: some upcaster keeps changing its output, or two rename each other."""

    def __init__(self, event_type: str, trail: list[str], limit: int) -> None:
        self.event_type, self.trail, self.limit = event_type, trail, limit
        super().__init__(
            f"upcasting {event_type!r} still changed it after {limit} steps (types: {' -> '.join(trail)}): "
            "make each upcaster return its input unchanged once its work is done (check for the field it "
            "adds, for example) and make sure no two upcasters rename types back and forth"
        )


_E = TypeVar("_E", bound=CodecError)


def _restore(cls: type[_E], message: str) -> _E:
    error = cls.__new__(cls)
    CodecError.__init__(error, message)
    return error


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
