"""The middleware base class: every hook is a no-op, override the ones you need."""

from __future__ import annotations

from tidings.middleware.pipeline import Pipeline

__all__ = ["Middleware"]


class Middleware:
    """Code around every dispatch.

    Example::

        class Audit(Middleware):
            def before_dispatch(self, pipeline: Pipeline) -> None:
                pipeline.metadata["user"] = current_user()
    """

    def before_dispatch(self, pipeline: Pipeline) -> None:
        """Before the command is routed and executed; may ``halt``."""

    def after_dispatch(self, pipeline: Pipeline) -> None:
        """After the events are appended (and, for strong consistency, acknowledged)."""

    def after_failure(self, pipeline: Pipeline) -> None:
        """After anything raised; ``pipeline.error`` says what. The error is raised again afterwards."""
