"""Strong consistency: a dispatch returns only once chosen handlers have handled its events.

With ``consistency="strong"`` the dispatch waits for every handler registered as strongly consistent
(``Acknowledgements.register_strong``) whose topics carry one of its events; with a list of names, for
those handlers (again only where their topics carry the events). Each handler must have acknowledged
each stream version the command appended, not only the last one: a handler may take a stream's events
out of stream order. If they have not all done so within the dispatch's timeout, it raises
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
        handlers = None if consistency == "strong" else list(consistency)
        assert pipeline.stream_id is not None, "ExtractIdentity sets the stream id"
        assert pipeline.aggregate_version is not None, "the dispatcher sets the version before after_dispatch"
        # The command appended its events as consecutive versions, ending at the aggregate's version.
        last = pipeline.aggregate_version
        versions = range(last - len(pipeline.events) + 1, last + 1)
        awaited = self.acknowledgements.awaited(handlers, pipeline.stream_id, versions)
        pending = self.acknowledgements.wait(awaited, pipeline.stream_id, pipeline.timeout)
        if pending:
            raise ConsistencyTimeout(pending, pipeline.timeout)
