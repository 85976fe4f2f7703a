"""The relay against kill -9, failover between processes, and a Kafka broker going down and coming back.

Each test checks the same thing at the end: a read_committed consumer reading the topic from start to
end sees every appended event exactly once, and each key's events in event_number order.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

from eventstore import PostgresEventStore
from eventstore import metrics as store_metrics
from eventstore.relay import Relay, RelayConfig
from eventstore.routing import Routing
from tests.eventstore.relay_support import (
    RelayProcess,
    Writers,
    assert_exactly_once_in_order,
    read_to_end,
    relay_row,
    wait_until,
)
from tests.torture import kill_rounds
from tidings.devservices import LocalKafka
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema

KILLS = kill_rounds(10)


def _environment(schema: PostgresSchema, kafka: KafkaNamespace) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": schema.server_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "TIDINGS_SCHEMA": schema.name,
    }


def _arguments(kafka: KafkaNamespace) -> list[str]:
    # Small batches, so that a kill often lands inside one.
    return ["--app", kafka.topic("bank"), "--partitions", "4", "--batch-size", "20", "--standby-poll", "0.2"]


def _published(store: PostgresEventStore) -> int:
    return relay_row(store)[1]


def _drain(store: PostgresEventStore, relay: RelayProcess, writers: Writers) -> None:
    """Stop the writers, let ``relay`` publish everything, stop it."""
    writers.stop()
    last = store.sequencer.catch_up()
    wait_until(lambda: _published(store) >= last, 120, f"the relay publishing up to event {last}")
    assert relay.terminate() == 0, "SIGTERM ends the relay cleanly"


def test_kill_9_at_random_moments_loses_nothing_and_publishes_nothing_twice(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    env, args = _environment(postgres_schema, kafka_namespace), _arguments(kafka_namespace)
    rng = random.Random(20261122)
    killed_mid_flow = 0
    with Writers(event_store) as writers:
        for round_ in range(KILLS):
            relay = RelayProcess(env, args, tmp_path / f"relay-{round_}.log")
            if rng.random() < 0.3:
                # Killed while it starts: before it leads, while it fences, reads the tail, or sends.
                time.sleep(rng.uniform(0.2, 2.0))  # the moment of the kill, chosen at random
            else:
                before = _published(event_store)
                wait_until(
                    lambda b=before: _published(event_store) > b, 60, f"round {round_}: a batch committed"
                )
                # Lands before a send, inside a batch, or between a commit and its checkpoint.
                time.sleep(rng.uniform(0.0, 0.25))
                killed_mid_flow += 1
            relay.kill()
        final = RelayProcess(env, args, tmp_path / "relay-final.log")
        _drain(event_store, final, writers)

    assert killed_mid_flow >= KILLS // 2
    seen = read_to_end(kafka_namespace.bootstrap_servers, [kafka_namespace.topic("bank.events")])
    assert_exactly_once_in_order(seen, writers.appended)


def test_a_standby_takes_over_within_seconds_of_the_leaders_kill_9(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    env, args = _environment(postgres_schema, kafka_namespace), _arguments(kafka_namespace)
    with Writers(event_store) as writers:
        first = RelayProcess(env, args, tmp_path / "first.log")
        second = RelayProcess(env, args, tmp_path / "second.log")
        processes = {first.identity: first, second.identity: second}
        wait_until(
            lambda: relay_row(event_store)[0] in processes and _published(event_store) > 0, 60, "a leader"
        )
        leader = processes.pop(relay_row(event_store)[0])  # type: ignore[arg-type]
        (standby,) = processes.values()
        # The standby only stands by: the leader alone publishes.
        before = _published(event_store)
        wait_until(lambda: _published(event_store) > before, 30, "the leader publishing")
        assert relay_row(event_store)[0] == leader.identity

        leader.kill()
        killed_at = time.monotonic()
        wait_until(lambda: relay_row(event_store)[0] == standby.identity, 30, "the standby leading")
        takeover = time.monotonic() - killed_at
        after = _published(event_store)
        wait_until(lambda: _published(event_store) > after, 30, "the new leader publishing")
        _drain(event_store, standby, writers)

    assert takeover < 10, f"the standby took {takeover:.1f}s to lead"
    seen = read_to_end(kafka_namespace.bootstrap_servers, [kafka_namespace.topic("bank.events")])
    assert_exactly_once_in_order(seen, writers.appended)


def test_a_broker_stopped_and_restarted_mid_stream_costs_no_event_and_no_duplicate(
    event_store: PostgresEventStore, own_broker: LocalKafka
) -> None:
    topic = "bank.events"
    relay = Relay(
        event_store,
        RelayConfig(
            own_broker.bootstrap_servers,
            routing=Routing(topic),
            partitions=3,
            batch_size=20,
            transaction_timeout=20,
        ),
    )
    errors = store_metrics.RELAY_ERRORS.labels(event_store.config.schema, "default", "kafka_unavailable")
    errors_before = errors._value.get()
    lag_events = store_metrics.RELAY_LAG_EVENTS.labels(event_store.config.schema, "default")
    relay.start()
    try:
        with Writers(event_store) as writers:
            wait_until(lambda: relay.last_published > 50, 60, "publishing before the outage")
            own_broker.pause()
            stopped_at = len(writers.appended)
            # Appends go on in PostgreSQL while Kafka is away, and the relay says it is waiting.
            wait_until(lambda: len(writers.appended) > stopped_at + 300, 60, "appends during the outage")
            wait_until(lambda: errors._value.get() > errors_before, 30, "the outage in tidings_relay_errors")
            assert lag_events._value.get() > 0, "the outage shows in tidings_relay_lag_events"
            published_during = relay.last_published
            own_broker.resume()
            wait_until(
                lambda: relay.last_published > published_during + 100, 120, "publishing after the outage"
            )
            writers.stop()
        last = event_store.sequencer.catch_up()
        wait_until(lambda: relay.last_published >= last, 120, "catching up")
    finally:
        relay.stop()

    seen = read_to_end(own_broker.bootstrap_servers, [topic])
    assert_exactly_once_in_order(seen, writers.appended)
