"""Middleware that ships with tidings: identity extraction, command validation, logging."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from tidings.errors import InvalidCommand
from tidings.middleware.base import Middleware
from tidings.middleware.pipeline import Pipeline

__all__ = ["DEFAULT_MIDDLEWARE", "CommandValidation", "ExtractIdentity", "LogDispatch"]

log = logging.getLogger("tidings.dispatch")


class ExtractIdentity(Middleware):
    """Sets ``pipeline.stream_id`` from the command's route (raises ``InvalidIdentity``). The dispatcher
    adds it first, before the application's middleware."""

    def before_dispatch(self, pipeline: Pipeline) -> None:
        pipeline.stream_id = pipeline.registration.stream_id(pipeline.command)


class CommandValidation(Middleware):
    """Refuses invalid commands before they reach an aggregate.

    A command is checked by its own ``validate()`` method if it has one, then by ``validators``: each
    returns a list of problems (empty when valid). Problems raise ``InvalidCommand`` listing them all.
    """

    def __init__(self, *validators: Callable[[Any], list[str]]) -> None:
        self.validators = validators

    def before_dispatch(self, pipeline: Pipeline) -> None:
        problems: list[str] = []
        own = getattr(pipeline.command, "validate", None)
        if callable(own):
            problems.extend(own() or [])
        for validator in self.validators:
            problems.extend(validator(pipeline.command))
        if problems:
            raise InvalidCommand(pipeline.command, problems)


class LogDispatch(Middleware):
    """One structured log line per dispatch: command, stream, outcome and duration."""

    def before_dispatch(self, pipeline: Pipeline) -> None:
        pipeline.assign("log_dispatch_started", time.perf_counter())

    def after_dispatch(self, pipeline: Pipeline) -> None:
        log.info("command dispatched", extra=self._fields(pipeline, events=len(pipeline.events)))

    def after_failure(self, pipeline: Pipeline) -> None:
        log.warning(
            "command failed",
            extra=self._fields(pipeline, error=f"{type(pipeline.error).__name__}: {pipeline.error}"),
        )

    def _fields(self, pipeline: Pipeline, **more: object) -> dict[str, object]:
        started = pipeline.assigns.get("log_dispatch_started", time.perf_counter())
        return {
            "command": type(pipeline.command).__qualname__,
            "command_uuid": str(pipeline.command_uuid),
            "stream_id": pipeline.stream_id,
            "milliseconds": round((time.perf_counter() - started) * 1000, 2),
            **more,
        }


DEFAULT_MIDDLEWARE: tuple[Middleware, ...] = (LogDispatch(),)
"""What an application runs when given no middleware (``ExtractIdentity`` always runs first)."""
