"""What a handler answers when handling an event fails: retry, retry later, skip, park, or stop.

``EventHandler.error(error, event, context)`` returns one of these. The default retries with a growing
delay and, after ``max_attempts``, gives up: the event is parked (or sent to the dead-letter topic).

Example::

    def error(self, error, event, context):
        match error:
            case TemporaryOutage() if context.attempt < 10:
                return Retry(delay=2.0, context={"last": str(error)})
            case InvalidAddress():
                return Skip()
            case _:
                return Park(f"{type(error).__name__}: {error}")
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Answered",
    "ErrorAnswer",
    "FailureContext",
    "Park",
    "Retry",
    "Skip",
    "Stop",
    "default_answer",
]


@dataclass(frozen=True, slots=True)
class Retry:
    """Handle the event again, after ``delay`` seconds; ``context`` is handed to the next ``error`` call.

    The event's partition holds while it waits: no later event of its key passes it.
    """

    delay: float = 0.0
    context: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.delay < 0:
            raise ValueError(f"Retry delay must be zero or more seconds, got {self.delay}")


@dataclass(frozen=True, slots=True)
class Skip:
    """Treat the event as handled and go on with the next one."""


@dataclass(frozen=True, slots=True)
class Park:
    """Give up on the event: park it, and every later event of its key, until an operator retries them.

    With ``on_poison = "dead_letter"`` the event goes to the handler's dead-letter topic instead and
    later events of its key go on.
    """

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop the handler: it consumes nothing more, keeps its position at this event, and reports itself
    not ready. Other handlers of the process go on."""

    reason: str = ""


ErrorAnswer = Retry | Skip | Park | Stop


class Answered(Exception):
    """A failure the handler has already answered itself: the runtime carries out ``answer`` as it is,
    and does not ask ``error`` again.

    A process manager raises it (as ``CommandFailed``) when ``error`` answered a failed *command* with
    ``Retry``, ``Park`` or ``Stop``: the answer was given with the command's context, and asking
    ``error`` again about the event would give it a second meaning (a ``Park`` skipped, a ``Stop``
    retried). The event's transaction is rolled back first, so a ``Retry`` waits outside it.
    It never reaches user code.
    """

    def __init__(self, answer: ErrorAnswer, error: BaseException, message: str | None = None) -> None:
        super().__init__(message or f"{type(error).__name__}: {error}")
        self.answer = answer
        self.error = error


@dataclass(frozen=True, slots=True)
class FailureContext:
    """What ``error`` knows about the failure.

    Attributes:
        attempt: 1 on the first failure of this event, 2 on the second...
        context: what the previous ``Retry`` carried (empty at first).
        metadata: the failed event's metadata (``EventMetadata``).
        state: the handler's state when it failed.
        stacktrace: the formatted traceback of the error.
    """

    attempt: int
    context: dict[str, Any]
    metadata: Any
    state: Any
    stacktrace: str

    @classmethod
    def of(
        cls, error: BaseException, attempt: int, context: dict[str, Any], metadata: Any, state: Any
    ) -> FailureContext:
        stacktrace = "".join(traceback.format_exception(error))
        return cls(attempt, context, metadata, state, stacktrace)


def default_answer(error: BaseException, context: FailureContext, max_attempts: int) -> ErrorAnswer:
    """Retry with a delay that doubles from 0.1 s up to 5 s; park after ``max_attempts`` failures."""
    if context.attempt < max_attempts:
        return Retry(delay=min(0.1 * 2 ** (context.attempt - 1), 5.0), context=context.context)
    return Park(f"gave up after {context.attempt} attempts: {type(error).__name__}: {error}")
