"""The relay chooses each message's partition itself: where librdkafka's ``murmur2_random`` (and Kafka's
Java producer) puts the same key, so that moving to tidings, or off it, moves no key."""

from __future__ import annotations

import random

from confluent_kafka import KafkaError, Message, Producer

from eventstore.partitioner import KeyPartitioner, murmur2
from tidings.pytest_plugin import KafkaNamespace

PARTITIONS = 7


def _keys() -> list[bytes]:
    rng = random.Random(20)
    keys = [b"", b"a", b"ab", b"abc", b"abcd", "account-é".encode(), "账户-17".encode()]
    keys += [rng.randbytes(rng.randrange(0, 48)) for _ in range(400)]  # every tail length, any byte
    keys += [f"account-{rng.getrandbits(128):032x}".encode() for _ in range(200)]  # stream-like ids
    return keys


def test_keys_land_on_the_partitions_librdkafka_chooses(kafka_namespace: KafkaNamespace) -> None:
    topic = kafka_namespace.create_topic("keys", partitions=PARTITIONS)
    producer = Producer(
        {"bootstrap.servers": kafka_namespace.bootstrap_servers, "partitioner": "murmur2_random"}
    )
    landed: dict[bytes, int] = {}
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            failures.append(error)
        else:
            landed[bytes(message.key() or b"")] = int(message.partition() or 0)

    keys = _keys()
    for key in keys:
        producer.produce(topic, b"v", key, on_delivery=delivered)
    assert producer.flush(60) == 0
    assert failures == []
    assert len(landed) == len(set(keys))
    ours = KeyPartitioner()
    wrong = {key: (landed[key], ours.partition(key, PARTITIONS)) for key in landed}
    wrong = {key: pair for key, pair in wrong.items() if pair[0] != pair[1]}
    assert not wrong, f"librdkafka's partition, ours: {wrong}"
    assert len(set(landed.values())) == PARTITIONS


def test_the_remembered_partition_is_per_partition_count_and_bounded() -> None:
    partitioner = KeyPartitioner()
    partitioner.LIMIT = 10
    key = b"stream-1"
    assert partitioner.partition(key, 1) == 0
    assert partitioner.partition(key, 12) == (murmur2(key) & 0x7FFFFFFF) % 12
    for n in range(50):
        assert partitioner.partition(f"k{n}".encode(), 3) == (murmur2(f"k{n}".encode()) & 0x7FFFFFFF) % 3
    assert len(partitioner._known) <= 10
