"""Attack on guarantee 3 under kill -9 (issue 19): a routing function that raises for one event while a
writer keeps appending, and relays killed at random moments around it. Publication stops at that event,
loudly, with everything before it published once; once the routing is fixed, everything after it follows,
once and in order. The relays run in processes of their own (a key function cannot be given to
``tidings relay``, so a small script runs ``Relay``). Real PostgreSQL, real Kafka.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from eventstore import ANY, EventData, PostgresEventStore
from eventstore.relay import relay_status
from tests.eventstore.relay_support import (
    Writers,
    append_events,
    assert_exactly_once_in_order,
    read_to_end,
    relay_row,
    wait_until,
)
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema

SCRIPT = """
import os, sys
from pathlib import Path
from eventstore import PostgresEventStore, StoreConfig
from eventstore.relay import Relay, RelayConfig
from eventstore.routing import Routing

gate, topic = Path(sys.argv[1]), sys.argv[2]

def key(event):
    if event.event_type == "Gate" and gate.exists():
        raise RuntimeError("the gate is closed")
    return event.stream_id

store = PostgresEventStore(StoreConfig(os.environ["DATABASE_URL"], os.environ["TIDINGS_SCHEMA"]))
Relay(
    store,
    RelayConfig(
        os.environ["KAFKA_BOOTSTRAP_SERVERS"],
        routing=Routing(topic, key=key),
        partitions=3,
        batch_size=20,
        problem_retry=0.2,
        standby_poll=0.2,
    ),
).run()
"""


def _verdict(store: PostgresEventStore) -> tuple[str, int | None] | None:
    return next(((s.verdict, s.problem_event) for s in relay_status(store) if s.name == "default"), None)


def test_kill_9_around_an_event_whose_routing_raises_publishes_up_to_it_then_everything_once(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": postgres_schema.server_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_namespace.bootstrap_servers,
        "TIDINGS_SCHEMA": postgres_schema.name,
    }
    topic = kafka_namespace.topic("events")
    gate = tmp_path / "gate-closed"
    gate.touch()

    def relay(log: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / log, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-c", SCRIPT, str(gate), topic],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    before = append_events(event_store, streams=5, per_stream=6)
    gate_event = EventData("Gate", b"g", schema_id="test:1")
    event_store.append_to_stream("account-0", ANY, [gate_event])
    gate_number = len(before) + 1
    rng = random.Random(1207)
    with Writers(event_store, streams=5) as writers:
        for round_ in range(8):
            process = relay(f"relay-{round_}.log")
            if round_ == 0:
                wait_until(
                    lambda: _verdict(event_store) == ("blocked", gate_number), 60, "blocked at the gate"
                )
            else:
                time.sleep(rng.uniform(0.2, 2.0))  # while it starts, reads the tail, or retries the gate
            process.send_signal(signal.SIGKILL)
            process.wait(30)
            assert relay_row(event_store)[1] <= gate_number - 1
        seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
        assert_exactly_once_in_order(seen, before)  # nothing passed the gate, nothing twice

        gate.unlink()  # the routing is fixed
        final = relay("relay-final.log")
        try:
            writers.stop()
            last = event_store.sequencer.catch_up()
            wait_until(lambda: relay_row(event_store)[1] >= last, 120, "the final relay")
            wait_until(lambda: _verdict(event_store) == ("ok", None), 30, "the verdict cleared")
        finally:
            final.send_signal(signal.SIGKILL)
            final.wait(30)
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    assert_exactly_once_in_order(seen, [*before, gate_event.event_id, *writers.appended])
