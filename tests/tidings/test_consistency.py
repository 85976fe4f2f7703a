"""Strong consistency on the real PostgreSQL: a dispatch waits for its handlers' acknowledgements."""

from __future__ import annotations

import threading
import time
import uuid
from decimal import Decimal

import pytest

from eventstore import PostgresEventStore, StreamNotFound
from eventstore.acknowledgements import Acknowledgements
from examples.bank.accounts import Deposit, OpenAccount, accounts
from examples.bank.events import events
from tests.tidings.avro_support import SCHEMAS
from tidings import Application, ConsistencyTimeout, EventMapper
from tidings.avro import AvroCodec, SchemaSet

MAPPER = EventMapper(AvroCodec(events, SchemaSet.load(SCHEMAS)))


class HandlerThread(threading.Thread):
    """Stands in for a worker (the workers issue builds the real one): acknowledges, after a delay, each
    new version of one stream, and notes when."""

    def __init__(self, store: PostgresEventStore, name: str, stream: str, delay: float) -> None:
        super().__init__(daemon=True)
        self.store, self.acks = store, Acknowledgements(store)
        self.handler, self.stream, self.delay = name, stream, delay
        self.acknowledged_at = 0.0
        self.stopping = threading.Event()

    def run(self) -> None:
        seen = 0
        while not self.stopping.is_set():
            try:
                version = len(self.store.read_stream_forward(self.stream))
            except StreamNotFound:
                version = 0
            if version > seen:
                self.stopping.wait(self.delay)  # the handler's work
                # Noted before acknowledging: a dispatch may return as soon as the row commits.
                self.acknowledged_at = time.monotonic()
                self.acks.acknowledge(self.handler, self.stream, version)
                seen = version
            self.stopping.wait(0.01)


def test_a_strong_dispatch_returns_only_after_every_strong_handler_acknowledged(
    event_store: PostgresEventStore,
) -> None:
    acks = Acknowledgements(event_store)
    acks.register_strong("balances")
    acks.register_strong("statements")
    app = Application(event_store, MAPPER, accounts)
    account = uuid.uuid4()
    stream = f"account-{account}"
    handlers = [
        HandlerThread(event_store, name, stream, delay)
        for name, delay in (("balances", 0.2), ("statements", 0.4))
    ]
    for handler in handlers:
        handler.start()
    try:
        app.dispatch(OpenAccount(account, "Ada"), consistency="strong", timeout=10)
        returned_at = time.monotonic()
    finally:
        for handler in handlers:
            handler.stopping.set()
    assert all(0 < h.acknowledged_at <= returned_at for h in handlers), "both acknowledging before the return"


def test_a_timeout_says_the_events_are_committed(event_store: PostgresEventStore) -> None:
    Acknowledgements(event_store).register_strong("slow")
    app = Application(event_store, MAPPER, accounts)
    account = uuid.uuid4()
    with pytest.raises(
        ConsistencyTimeout, match="events are committed, but slow did not acknowledge"
    ) as raised:
        app.dispatch(OpenAccount(account, "Ada"), consistency="strong", timeout=0.3)
    assert raised.value.pending == ["slow"]
    assert len(event_store.read_stream_forward(f"account-{account}")) == 1, "committed all the same"


def test_named_handlers_and_eventual_consistency_wait_for_what_they_name(
    event_store: PostgresEventStore,
) -> None:
    acks = Acknowledgements(event_store)
    acks.register_strong("never")
    app = Application(event_store, MAPPER, accounts)
    account = uuid.uuid4()
    app.dispatch(OpenAccount(account, "Ada"))  # eventual: no wait, although "never" never answers
    acks.acknowledge("quick", f"account-{account}", range(1, 6))
    app.dispatch(Deposit(account, Decimal("1.00")), consistency=["quick"], timeout=2)  # version 2 done
    with pytest.raises(ConsistencyTimeout):
        app.dispatch(Deposit(account, Decimal("1.00")), consistency=["quick", "never"], timeout=0.2)


def test_acknowledgements_count_each_version_and_expire(event_store: PostgresEventStore) -> None:
    acks = Acknowledgements(event_store)
    acks.acknowledge("h", "s-1", 5)
    acks.acknowledge("h", "s-1", 3)  # late and older: both stay
    assert acks.pending(["h"], "s-1", 5) == []
    assert acks.pending(["h"], "s-1", [3, 5]) == []
    assert acks.pending(["h"], "s-1", 4) == ["h"], "version 5 says nothing of version 4"
    assert acks.pending(["h"], "s-1", 6) == ["h"]
    assert acks.expire(older_than=3600) == 0
    assert acks.expire(older_than=0) == 1
    assert acks.pending(["h"], "s-1", 1) == ["h"]
    acks.register_strong("h")
    acks.unregister_strong("h")
    assert acks.strong_handlers() == []
