"""The pipeline: one dispatch as the middleware sees it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Pipeline"]


@dataclass
class Pipeline:
    """A command on its way through middleware to its aggregate, and what came of it."""

    command: object
    command_uuid: uuid.UUID
    causation_id: uuid.UUID
    correlation_id: uuid.UUID
    metadata: dict[str, Any]
    consistency: Any
    registration: Any = None
    """The command's route (a ``tidings.router.Registration``)."""
    stream_id: str | None = None
    """Set by ``ExtractIdentity``: the aggregate's stream."""
    assigns: dict[str, Any] = field(default_factory=dict)
    halted: bool = False
    response: Any = None
    error: BaseException | None = None
    """In ``after_failure``: what went wrong."""
    events: list[object] = field(default_factory=list)
    """In ``after_dispatch``: the events the command produced."""
    aggregate_version: int | None = None
    """In ``after_dispatch``: the stream version the command left the aggregate at."""
    timeout: float = 5.0
    """Seconds the dispatch may take (strong consistency waits within it too)."""
    connection: Any = None
    """The caller's PostgreSQL connection (``dispatch(..., connection=...)``) when the dispatch joins its
    transaction: the events commit with it, or not at all."""

    def assign(self, key: str, value: Any) -> Pipeline:
        """Keep ``value`` for later middleware under ``key``."""
        self.assigns[key] = value
        return self

    def halt(self, response: Any = None) -> Pipeline:
        """Stop before the command runs. Dispatch returns ``response``, raises it if it is an exception,
        or raises ``DispatchHalted`` if there is none."""
        self.halted = True
        if response is not None:
            self.response = response
        return self

    def respond(self, response: Any) -> Pipeline:
        """What dispatch returns instead of what ``returning`` asked for."""
        self.response = response
        return self
