"""Attacks on what `tidings status` says of a stopped handler (issue 20, case 9d).

A handler stopped by its error policy is recorded in ``handler_states``. Once it runs again (a redeployed
worker, not a `tidings handler restart`), the record is over: status must not show a stop older than the
handler's current run, and must still show a stop made during it.
"""

from __future__ import annotations

import threading
from typing import Any

from eventstore import PostgresEventStore
from tests.workers.worker_support import Noted, Recorder, append_noted, eventually, stack
from tidings.pytest_plugin import KafkaNamespace
from workers.delivery import EventMetadata
from workers.failure import ErrorAnswer, FailureContext, Stop
from workers.handler import EventHandler
from workers.handler_states import HandlerStates
from workers.status import collect_status, specs_of


class Poisoned(Exception):
    pass


def test_a_handler_running_again_after_a_redeploy_no_longer_shows_its_old_stop(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    poisoned = {"s1"}  # streams whose events fail; the "fix" empties it
    lock = threading.Lock()
    seen = Recorder()

    class Picky(EventHandler):
        name = kafka_namespace.group("picky")
        ordering = "global"

        def handle(self, event: Noted, metadata: EventMetadata) -> None:
            with lock:
                if metadata.stream_id in poisoned:
                    raise Poisoned(metadata.stream_id)
            seen.add(metadata.stream_id, event.n, metadata.event_number)

        def error(self, error: BaseException, event: Any, context: FailureContext) -> ErrorAnswer:
            return Stop(f"{type(error).__name__}: {error}")

    states = HandlerStates(event_store)

    with stack(event_store, kafka_namespace) as s:
        app = s.app(Picky)

        def shown() -> str:
            status = collect_status(
                event_store, kafka_namespace.bootstrap_servers, {}, topics=[s.topic], handlers=specs_of(app)
            )
            return status.handler(Picky.name).state

        append_noted(event_store, streams=2, per_stream=2)  # s0 0, s1 0 (poisoned), s0 1, s1 1
        first = s.run(Picky)
        eventually(lambda: first.status.state == "stopped", what="stopped by its error policy")
        assert [stop.handler for stop in states.stopped()] == [Picky.name]
        assert shown() == "stopped"
        first.stop()

        # The cause is fixed and the worker redeployed: a new process runs the handler again.
        with lock:
            poisoned.clear()
        second = s.run(Picky)
        eventually(lambda: seen.count() == 4, what="every event handled after the redeploy")
        assert second.status.state == "running"
        assert states.stopped() == []
        assert shown() == ""

        # A stop made during the current run is shown (superseding forgets only older ones).
        with lock:
            poisoned.add("s9")
        append_noted(event_store, streams=10, per_stream=1, prefix="s")
        eventually(lambda: second.status.state == "stopped", what="stopped again")
        (stop,) = states.stopped()
        assert stop.reason.endswith("Poisoned: s9")
        assert shown() == "stopped"
