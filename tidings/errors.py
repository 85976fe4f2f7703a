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

The write side's errors, from routing a command, running it and appending what it produced:

    DispatchError
    ├── UnregisteredCommand   no router registration for the command's type
    ├── DuplicateRegistration a command type registered twice (raised at registration)
    ├── InvalidIdentity       the command's identity is missing, empty or not a str/int/UUID
    ├── InvalidCommand        a validation middleware refused the command
    ├── DispatchHalted        a middleware halted the dispatch without a response
    ├── TooManyAttempts       the aggregate's stream kept moving: every retry met a newer version
    ├── ExecutionTimeout      the command did not finish within its timeout (nothing was appended)
    ├── ExecutionFailed       the aggregate's apply raised: a bug, since apply must accept every event
    ├── ReentrantDispatch     a command dispatched from inside the execute of a command to its aggregate
    └── ConsistencyTimeout    the events are committed, but strongly consistent handlers did not all
                              acknowledge them in time


Exceptions raised by an aggregate's ``execute`` (domain errors) pass through unchanged.
"""

from __future__ import annotations

from typing import Any, Self, TypeVar

__all__ = [
    "CodecError",
    "ConsistencyTimeout",
    "DispatchError",
    "DispatchHalted",
    "DuplicateRegistration",
    "ExecutionFailed",
    "ExecutionTimeout",
    "InvalidCommand",
    "InvalidIdentity",
    "ReentrantDispatch",
    "TooManyAttempts",
    "UnregisteredCommand",
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


# --- the write side ---------------------------------------------------------------------------------


class DispatchError(Exception):
    """Base of the write side's errors."""


class UnregisteredCommand(DispatchError, LookupError):
    def __init__(self, command_type: type) -> None:
        super().__init__(
            f"no route for {command_type.__qualname__}: register it with "
            f"router.dispatch({command_type.__qualname__}, to=<Aggregate>, identity=...)"
        )
        self.command_type = command_type


class DuplicateRegistration(DispatchError, ValueError):
    def __init__(self, command_type: type) -> None:
        super().__init__(f"{command_type.__qualname__} is already routed: each command type has one route")
        self.command_type = command_type


class InvalidIdentity(DispatchError, ValueError):
    def __init__(self, command: object, problem: str) -> None:
        super().__init__(f"{type(command).__qualname__}: {problem}")
        self.command = command


class InvalidCommand(DispatchError, ValueError):
    def __init__(self, command: object, problems: list[str]) -> None:
        super().__init__(f"{type(command).__qualname__} is invalid: {'; '.join(problems)}")
        self.command = command
        self.problems = problems


class DispatchHalted(DispatchError):
    def __init__(self, command: object) -> None:
        super().__init__(
            f"a middleware halted the dispatch of {type(command).__qualname__} without a response"
        )
        self.command = command


class TooManyAttempts(DispatchError):
    def __init__(self, stream_id: str, attempts: int) -> None:
        super().__init__(
            f"{stream_id} kept changing: {attempts} attempts each met a newer version. Nothing was appended; "
            "dispatch again, or raise retry_attempts for aggregates this busy"
        )
        self.stream_id = stream_id
        self.attempts = attempts


class ExecutionTimeout(DispatchError, TimeoutError):
    def __init__(self, command: object, timeout: float) -> None:
        super().__init__(
            f"{type(command).__qualname__} did not finish within {timeout}s; nothing was appended"
        )
        self.timeout = timeout


class ReentrantDispatch(DispatchError):
    """A command was dispatched from inside the ``execute`` of a command to the same aggregate."""

    def __init__(self, command: object, stream_id: str) -> None:
        super().__init__(
            f"{type(command).__qualname__} was dispatched to {stream_id} from inside a command that "
            f"{stream_id} is executing: it would wait for the aggregate it runs in. execute must decide "
            "events, not dispatch; dispatch follow-up commands from a process manager or an event handler"
        )
        self.command, self.stream_id = command, stream_id


class ExecutionFailed(DispatchError):
    def __init__(self, aggregate: type, stream_id: str, event: object, committed: bool) -> None:
        outcome = (
            "the events are committed; the cached state was dropped, so the next command reads the stream "
            "again"
            if committed
            else "nothing was appended"
        )
        super().__init__(
            f"{aggregate.__qualname__}.apply raised on {type(event).__qualname__} in {stream_id} "
            f"({outcome}). apply must accept every event that execute produces or the store holds: "
            "fix the aggregate"
        )
        self.aggregate, self.stream_id, self.event, self.committed = aggregate, stream_id, event, committed


class ConsistencyTimeout(DispatchError, TimeoutError):
    def __init__(self, pending: list[str], timeout: float) -> None:
        super().__init__(
            f"the events are committed, but {', '.join(pending)} did not acknowledge them within {timeout}s. "
            "Do not dispatch the command again: it succeeded. Read models may lag behind it"
        )
        self.pending = pending
        self.timeout = timeout
