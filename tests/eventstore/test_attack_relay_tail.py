"""Attacks on the relay's trust in its topics' tail (issue 19): what else is in the topic must never make
a restarted relay publish an event twice, skip one, or stop without saying so.

Each test plants something on the tail of a real Kafka topic while the relay is stopped (copies of the
relay's own messages, own identity with damaged or made-up headers, an older epoch, an open foreign
transaction) and restarts it against the real PostgreSQL store. The relay may pass the message over or
stop loudly (a verdict other than ``ok``); it may not publish an event a second time, silently.
"""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from confluent_kafka import Producer

from eventstore import PostgresEventStore, metrics
from eventstore.kafka_tail import EPOCH_HEADER, PREVIOUS_HEADER, RELAY_HEADER, STORE_HEADER
from eventstore.relay import Relay, RelayConfig, resume_after
from eventstore.relay_position import RelayRecord
from eventstore.routing import Routing
from tests.eventstore.relay_support import (
    Seen,
    append_events,
    read_to_end,
    relay_verdict,
    start_relay,
    wait_until,
)
from tidings.pytest_plugin import KafkaNamespace

RETRY = 0.2


def _config(namespace: KafkaNamespace, topic: str, **settings: object) -> RelayConfig:
    settings.setdefault("routing", Routing(topic))
    return RelayConfig(namespace.bootstrap_servers, problem_retry=RETRY, **settings)  # type: ignore[arg-type]


def _store_id(store: PostgresEventStore) -> str:
    return RelayRecord(store, "default").store_id()


def _copy(bootstrap: str, message: Seen, headers: list[tuple[str, str | bytes | None]] | None = None) -> None:
    """Produce ``message`` again into its own partition (a mirror replaying a topic, a restored backup)."""
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(
        message.topic,
        message.value,
        message.key,
        partition=message.partition,
        headers=headers if headers is not None else [(k, v) for k, v in message.headers.items()],
    )
    assert producer.flush(30) == 0


def _settled(relay: Relay, store: PostgresEventStore, total: int) -> bool:
    """The relay published everything, or stopped and says why: either is an end to look at."""
    return relay.last_published >= total or relay_verdict(store) not in ("ok", None)


def _assert_each_event_once(seen: list[Seen], appended: list[uuid.UUID], planted: set[int]) -> None:
    """Every appended event on the topic once, leaving out the ``planted`` offsets (the attack's own)."""
    relayed = [m for m in seen if m.offset not in planted or m.partition != 0]
    counts = Counter(m.headers.get("event_id") for m in relayed)
    twice = sorted(int(m.headers["event_number"]) for m in relayed if counts[m.headers.get("event_id")] > 1)
    assert not twice, f"published twice: event_numbers {sorted(set(twice))}"
    missing = {str(i).encode() for i in appended} - set(counts)
    assert not missing, f"{len(missing)} events never published"


def _publish_then_stop(
    relays: list[Relay], store: PostgresEventStore, config: RelayConfig, count: int
) -> list[uuid.UUID]:
    appended = append_events(store, streams=3, per_stream=count // 3)
    first = start_relay(relays, store, config)
    wait_until(lambda: first.last_published == len(appended), 30, "the first relay")
    first.stop()
    return appended


def test_a_replayed_copy_of_an_own_early_message_does_not_make_a_restarted_relay_publish_again(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    # Guarantee 1, "replayed copies of the relay's own messages": a mirror or a restored backup writes
    # the relay's first message again, byte for byte, at the end of the topic.
    topic = kafka_namespace.topic("events")
    config = _config(kafka_namespace, topic, partitions=1)
    appended = _publish_then_stop(relays, event_store, config, 9)
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    first_message = min(seen, key=lambda m: m.offset)
    _copy(kafka_namespace.bootstrap_servers, first_message)
    planted = {max(m.offset for m in read_to_end(kafka_namespace.bootstrap_servers, [topic]))}
    appended += append_events(event_store, streams=3, per_stream=1, prefix="later")

    second = start_relay(relays, event_store, config)
    wait_until(lambda: _settled(second, event_store, len(appended)), 30, "the restarted relay")
    _assert_each_event_once(read_to_end(kafka_namespace.bootstrap_servers, [topic]), appended, planted)


def test_own_identity_without_an_event_number_does_not_make_a_restarted_relay_publish_again(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    # Partial identity: the store's real id and the relay's name, but no event_number nor event_id.
    topic = kafka_namespace.topic("events")
    config = _config(kafka_namespace, topic, partitions=1)
    appended = _publish_then_stop(relays, event_store, config, 9)
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    _copy(
        kafka_namespace.bootstrap_servers,
        seen[0],
        [(STORE_HEADER, _store_id(event_store).encode()), (RELAY_HEADER, b"default"), (EPOCH_HEADER, b"0")],
    )
    planted = {max(m.offset for m in read_to_end(kafka_namespace.bootstrap_servers, [topic]))}
    appended += append_events(event_store, streams=3, per_stream=1, prefix="later")

    second = start_relay(relays, event_store, config)
    wait_until(lambda: _settled(second, event_store, len(appended)), 30, "the restarted relay")
    _assert_each_event_once(read_to_end(kafka_namespace.bootstrap_servers, [topic]), appended, planted)


@pytest.mark.parametrize("number", [b"-1", b"0", b"4.0"])
def test_own_identity_with_a_made_up_low_event_number_does_not_make_a_restarted_relay_publish_again(
    number: bytes, event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    topic = kafka_namespace.topic("events")
    config = _config(kafka_namespace, topic, partitions=1)
    appended = _publish_then_stop(relays, event_store, config, 9)
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    headers = [(k, v) for k, v in seen[-1].headers.items() if k != "event_number"]
    _copy(kafka_namespace.bootstrap_servers, seen[-1], [("event_number", number), *headers])
    planted = {max(m.offset for m in read_to_end(kafka_namespace.bootstrap_servers, [topic]))}
    appended += append_events(event_store, streams=3, per_stream=1, prefix="later")

    second = start_relay(relays, event_store, config)
    wait_until(lambda: _settled(second, event_store, len(appended)), 30, "the restarted relay")
    _assert_each_event_once(read_to_end(kafka_namespace.bootstrap_servers, [topic]), appended, planted)


def test_a_forged_previous_header_on_an_own_message_does_not_make_a_restarted_relay_publish_again(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    # A copy of the relay's newest message whose tidings.previous claims far more on the topic than it
    # holds: the relay takes the topic for recreated and publishes everything again.
    topic = kafka_namespace.topic("events")
    config = _config(kafka_namespace, topic, partitions=1)
    appended = _publish_then_stop(relays, event_store, config, 9)
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    newest = max(seen, key=lambda m: m.offset)
    headers = [(k, v) for k, v in newest.headers.items() if k != PREVIOUS_HEADER]
    _copy(kafka_namespace.bootstrap_servers, newest, [*headers, (PREVIOUS_HEADER, f"{topic}=999".encode())])
    planted = {max(m.offset for m in read_to_end(kafka_namespace.bootstrap_servers, [topic]))}
    appended += append_events(event_store, streams=3, per_stream=1, prefix="later")

    second = start_relay(relays, event_store, config)
    wait_until(lambda: _settled(second, event_store, len(appended)), 30, "the restarted relay")
    _assert_each_event_once(read_to_end(kafka_namespace.bootstrap_servers, [topic]), appended, planted)


def test_an_own_event_number_beyond_a_bigint_is_a_recorded_verdict_and_the_relay_keeps_leading(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    # Guarantee 2: a tail the relay cannot confirm is a verdict in relay_status, with a metric, and the
    # relay stays alive and leading; or it passes the message over and publishes every event once. The
    # number does not fit the relays row's bigint problem_event (nor event_order's event_number).
    topic = kafka_namespace.topic("events")
    config = _config(kafka_namespace, topic, partitions=1)
    appended = _publish_then_stop(relays, event_store, config, 6)
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    newest = max(seen, key=lambda m: m.offset)
    headers = [(k, v) for k, v in newest.headers.items() if k != "event_number"]
    _copy(kafka_namespace.bootstrap_servers, newest, [("event_number", str(2**64).encode()), *headers])
    planted = {max(m.offset for m in read_to_end(kafka_namespace.bootstrap_servers, [topic]))}
    appended += append_events(event_store, streams=3, per_stream=1, prefix="later")

    second = start_relay(relays, event_store, config)
    wait_until(lambda: _settled(second, event_store, len(appended)), 30, "a verdict, or every event")
    assert second.leading.is_set()
    if relay_verdict(event_store) != "ok":
        assert metrics.RELAY_BLOCKED.labels(event_store.config.schema, "default")._value.get() == 1
    else:
        _assert_each_event_once(read_to_end(kafka_namespace.bootstrap_servers, [topic]), appended, planted)


def test_a_copy_of_an_older_epochs_message_does_not_undo_the_operators_decision_on_restart(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    # Guarantee 4: resume-after survives restarts. A replayed message of the epoch before the decision
    # lands at the tail after the relay published in the new epoch.
    topic = kafka_namespace.topic("events")
    config = _config(kafka_namespace, topic, partitions=1)
    appended = append_events(event_store, streams=3, per_stream=2)
    relay = start_relay(relays, event_store, config)
    wait_until(lambda: relay.last_published == 6, 30, "the relay")
    resume_after(event_store, 6)  # nothing changes where it goes on, but it is epoch 1 now
    wait_until(lambda: relay._identity.epoch == 1, 30, "the relay takes the decision")
    appended += append_events(event_store, streams=3, per_stream=2, prefix="later")
    wait_until(lambda: relay.last_published == 12, 30, "the relay in epoch 1")
    relay.stop()
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    epoch_zero = next(m for m in seen if m.headers[EPOCH_HEADER] == b"0")
    _copy(kafka_namespace.bootstrap_servers, epoch_zero)
    planted = {max(m.offset for m in read_to_end(kafka_namespace.bootstrap_servers, [topic]))}
    appended += append_events(event_store, streams=3, per_stream=1, prefix="last")

    second = start_relay(relays, event_store, config)
    wait_until(lambda: _settled(second, event_store, len(appended)), 30, "the restarted relay")
    _assert_each_event_once(read_to_end(kafka_namespace.bootstrap_servers, [topic]), appended, planted)


def test_a_foreign_transaction_left_open_on_the_topic_does_not_make_a_restarted_relay_publish_again(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    # Another transactional producer (a test tool, a stream processor writing to the wrong topic) opens
    # a transaction on the relay's partition and leaves it open. The relay's later batches commit, but a
    # read_committed reader sees nothing past the open transaction's first message (the last stable
    # offset) until it ends. A relay restarted meanwhile must not take the stable end for its tail.
    topic = kafka_namespace.topic("events")
    config = _config(kafka_namespace, topic, partitions=1)
    appended = append_events(event_store, streams=3, per_stream=2)
    relay = start_relay(relays, event_store, config)
    wait_until(lambda: relay.last_published == 6, 30, "the relay")

    foreign = Producer(
        {
            "bootstrap.servers": kafka_namespace.bootstrap_servers,
            "transactional.id": kafka_namespace.topic("foreign-tx"),
            "transaction.timeout.ms": 120_000,
        }
    )
    foreign.init_transactions(30)
    foreign.begin_transaction()
    foreign.produce(topic, b"foreign", b"foreign", partition=0)
    assert foreign.flush(30) == 0
    appended += append_events(event_store, streams=3, per_stream=2, prefix="during")
    wait_until(lambda: relay.last_published == 12, 30, "the relay, past the open transaction")
    relay.stop()

    appended += append_events(event_store, streams=3, per_stream=1, prefix="after")
    second = start_relay(relays, event_store, config)
    wait_until(lambda: _settled(second, event_store, len(appended)), 60, "the restarted relay")
    foreign.abort_transaction(30)
    # Waiting for the open transaction to end is a right answer too: then it publishes on.
    wait_until(lambda: second.last_published >= len(appended), 60, "the relay, once the transaction ended")
    _assert_each_event_once(read_to_end(kafka_namespace.bootstrap_servers, [topic]), appended, set())


def test_a_replayed_copy_without_identity_above_a_first_window_of_foreign_messages_is_not_the_tail(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    # The tail is read in a widening window (64 offsets first). A copy of the relay's first message
    # without the identity headers (an earlier release's message replayed, or a mirror that drops
    # headers it does not know) is confirmed by the store; with over 64 foreign messages between it and
    # the relay's newest own message, the first window holds the copy and not the own message.
    topic = kafka_namespace.topic("events")
    config = _config(kafka_namespace, topic, partitions=1)
    appended = _publish_then_stop(relays, event_store, config, 9)
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    first_message = min(seen, key=lambda m: m.offset)
    producer = Producer({"bootstrap.servers": kafka_namespace.bootstrap_servers})
    for _ in range(100):
        producer.produce(topic, b"noise", b"foreign", partition=0)
    identity = (STORE_HEADER, RELAY_HEADER, EPOCH_HEADER, PREVIOUS_HEADER)
    stripped = [(k, v) for k, v in first_message.headers.items() if k not in identity]
    producer.produce(topic, first_message.value, first_message.key, partition=0, headers=stripped)
    for _ in range(30):
        producer.produce(topic, b"noise", b"foreign", partition=0)
    assert producer.flush(30) == 0
    planted = {m.offset for m in read_to_end(kafka_namespace.bootstrap_servers, [topic]) if m.offset > 8}
    appended += append_events(event_store, streams=3, per_stream=1, prefix="later")

    second = start_relay(relays, event_store, config)
    wait_until(lambda: _settled(second, event_store, len(appended)), 30, "the restarted relay")
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    _assert_each_event_once([m for m in seen if m.key != b"foreign"], appended, planted)
