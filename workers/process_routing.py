"""How a process manager routes an event to its instances, and what it answers when a command fails.

``ProcessManager.interested(event, metadata)`` returns one of the routing answers below, or None to
ignore the event. Each names one process id or several (fan-out): ``Start("t-1")``,
``Continue(["t-1", "t-2"])``. ``Broadcast()`` reaches every live instance.

- ``Start``: a new instance (its state from ``state_type()``); one that exists already goes on as it is.
- ``StartStrict``: a new instance; one that exists already is an error (``ProcessAlreadyStarted``).
- ``Continue``: an existing instance; one that does not exist is started.
- ``ContinueStrict``: an existing instance; a missing one is an error (``ProcessNotStarted``).
- ``Stop``: delete the instance and its state; the event is not handled.
- ``StartOrContinue`` says in its name what ``Start`` and ``Continue`` do without ``Strict``.
- ``Broadcast``: every instance that exists (beyond Commanded).

When a command a process manager dispatched fails, ``error(error, command, context)`` may answer, beside
``Retry`` and ``Stop``: ``ContinueWith(commands)`` (dispatch these instead of the failed command and the
ones pending after it), ``DiscardPending()`` (drop the failed command and the pending ones) or
``ContinuePending()`` (drop the failed command, dispatch the pending ones).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Broadcast",
    "CommandAnswer",
    "Continue",
    "ContinuePending",
    "ContinueStrict",
    "ContinueWith",
    "DiscardPending",
    "ProcessAlreadyStarted",
    "ProcessNotStarted",
    "Route",
    "Routing",
    "Start",
    "StartOrContinue",
    "StartStrict",
    "Stop",
    "process_ids",
]

ProcessId = str | uuid.UUID
Ids = ProcessId | Sequence[ProcessId]


def process_ids(ids: Ids) -> tuple[str, ...]:
    """The ids as text, in order, without repeats; ``TypeError`` for anything but text or UUIDs."""
    if isinstance(ids, str | uuid.UUID):
        many: list[object] = [ids]
    elif isinstance(ids, Sequence | set | frozenset):
        many = list(ids)
    else:
        raise TypeError(f"a process id is a non-empty str or a UUID, or a list of them; got {ids!r}")
    found: dict[str, None] = {}
    for one in many:
        if not isinstance(one, str | uuid.UUID) or (isinstance(one, str) and not one):
            raise TypeError(f"a process id is a non-empty str or a UUID, got {one!r}")
        found[str(one)] = None
    return tuple(found)


@dataclass(frozen=True, slots=True, init=False)
class _Route:
    ids: tuple[str, ...]

    def __init__(self, ids: Ids) -> None:
        object.__setattr__(self, "ids", process_ids(ids))


class Start(_Route):
    """Start the instance(s); an existing one goes on with its state."""

    __slots__ = ()


class StartStrict(_Route):
    """Start the instance(s); an existing one is a ``ProcessAlreadyStarted`` error."""

    __slots__ = ()


class StartOrContinue(_Route):
    """Continue the instance(s), starting any that does not exist."""

    __slots__ = ()


class Continue(_Route):
    """Continue the instance(s); a missing one is started."""

    __slots__ = ()


class ContinueStrict(_Route):
    """Continue the instance(s); a missing one is a ``ProcessNotStarted`` error."""

    __slots__ = ()


class Stop(_Route):
    """Stop the instance(s): their state is deleted, and the event is not handled."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Continue every live instance of the process manager (none: the event is ignored)."""


Routing = Start | StartStrict | StartOrContinue | Continue | ContinueStrict | Stop | Broadcast


@dataclass(frozen=True, slots=True)
class Route:
    """What happens to one instance for one event: ``action`` is "start", "continue" or "stop"."""

    process_id: str
    action: str


class ProcessAlreadyStarted(Exception):
    """``StartStrict`` named an instance that exists."""

    def __init__(self, process_manager: str, process_id: str) -> None:
        super().__init__(
            f"{process_manager}: process {process_id!r} is already started (StartStrict); answer Skip "
            "in error() to ignore the event, or route it with Start to go on with the instance"
        )
        self.process_id = process_id


class ProcessNotStarted(Exception):
    """``ContinueStrict`` named an instance that does not exist."""

    def __init__(self, process_manager: str, process_id: str) -> None:
        super().__init__(
            f"{process_manager}: process {process_id!r} is not started (ContinueStrict); answer Skip "
            "in error() to ignore the event, or route it with Continue to start the instance"
        )
        self.process_id = process_id


def decide_routes(
    process_manager: str, routing: Routing | None, live: set[str] | frozenset[str]
) -> list[Route]:
    """The instances ``routing`` reaches and what happens to each, given the ids of the ``live`` ones
    among those it names (all live ones for ``Broadcast``), in a stable order.

    Raises:
        ProcessAlreadyStarted, ProcessNotStarted: a strict route's check failed.
        TypeError: ``interested`` answered something that is not a routing.
    """
    if routing is None:
        return []
    if isinstance(routing, Broadcast):
        return [Route(process_id, "continue") for process_id in sorted(live)]
    if not isinstance(routing, _Route):
        raise TypeError(
            f"{process_manager}.interested answered {routing!r}: answer Start, StartStrict, Continue, "
            "ContinueStrict, StartOrContinue, Stop, Broadcast or None"
        )
    routes = []
    for process_id in routing.ids:
        exists = process_id in live
        if isinstance(routing, StartStrict) and exists:
            raise ProcessAlreadyStarted(process_manager, process_id)
        if isinstance(routing, ContinueStrict) and not exists:
            raise ProcessNotStarted(process_manager, process_id)
        if isinstance(routing, Stop):
            if exists:
                routes.append(Route(process_id, "stop"))
            continue
        routes.append(Route(process_id, "continue" if exists else "start"))
    return routes


@dataclass(frozen=True, slots=True)
class ContinueWith:
    """Dispatch ``commands`` in place of the failed command and those pending after it."""

    commands: Sequence[object] = ()
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DiscardPending:
    """Drop the failed command and the commands pending after it; the event counts as handled."""


@dataclass(frozen=True, slots=True)
class ContinuePending:
    """Drop the failed command, and dispatch the commands pending after it."""


CommandAnswer = ContinueWith | DiscardPending | ContinuePending
