"""Strong consistency: a dispatch returns only once chosen handlers have handled its events.

With ``consistency="strong"`` the dispatch waits for every handler registered as strongly consistent
(``Acknowledgements.register_strong``); with a list of names, for those handlers. If they have not all
acknowledged the command's stream version within the dispatch's timeout, it raises
``ConsistencyTimeout``: **the events are committed all the same**. Dispatching the command again would
run it twice. Commanded users trip on this (Commanded #296): a timeout here means "not visible yet",
never "did not happen".
"""

from __future__ import annotations

from eventstore.acknowledgements import Acknowledgements
from tidings.errors import ConsistencyTimeout
from tidings.middleware.base import Middleware
from tidings.middleware.pipeline import Pipeline

__all__ = ["ConsistencyGuarantee"]


class ConsistencyGuarantee(Middleware):
    """Waits, after a strongly consistent dispatch, for its handlers' acknowledgements."""

    def __init__(self, acknowledgements: Acknowledgements) -> None:
        self.acknowledgements = acknowledgements

    def after_dispatch(self, pipeline: Pipeline) -> None:
        consistency = pipeline.consistency
        if consistency == "eventual" or not pipeline.events:
            return
        handlers = self.acknowledgements.strong_handlers() if consistency == "strong" else list(consistency)
        assert pipeline.stream_id is not None, "ExtractIdentity sets the stream id"
        assert pipeline.aggregate_version is not None, "the dispatcher sets the version before after_dispatch"
        pending = self.acknowledgements.wait(
            handlers, pipeline.stream_id, pipeline.aggregate_version, pipeline.timeout
        )
        if pending:
            raise ConsistencyTimeout(pending, pipeline.timeout)
