"""Create the topics a worker reads or writes when they do not exist yet.

The relay creates the events topics when it first publishes; a worker started before it (or a handler
that repartitions, or dead-letters) creates them with the same settings, so it can subscribe at once.
Like the relay, it keeps every event (``retention.ms=-1``): handlers may replay from the origin.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from eventstore.relay import TopicCreationFailed

if TYPE_CHECKING:
    from workers.app import WorkerConfig

__all__ = ["ensure_topics"]

log = logging.getLogger("workers.topics")


def ensure_topics(
    config: WorkerConfig, topics: Sequence[str], timeout: float = 30.0, known_by: Consumer | None = None
) -> None:
    """Create those of ``topics`` that are missing.

    ``known_by``: a client already connected (the worker's consumer), asked which topics exist instead
    of connecting an admin client; one is connected only to create what is missing.

    Raises:
        TopicCreationFailed: Kafka refused to create one (its reason is in the message).
        KafkaException: Kafka did not answer within ``timeout``.
    """
    admin: AdminClient | None = None
    if known_by is None:
        admin = AdminClient(dict(config.connection()))
        existing = admin.list_topics(timeout=timeout).topics
    else:
        existing = known_by.list_topics(timeout=timeout).topics
    missing = [topic for topic in dict.fromkeys(topics) if topic not in existing]
    if not missing:
        return
    if admin is None:
        admin = AdminClient(dict(config.connection()))
    futures = admin.create_topics(
        [
            NewTopic(topic, config.partitions, config.replication_factor, config={"retention.ms": "-1"})
            for topic in missing
        ],
        operation_timeout=timeout,
    )
    for topic, future in futures.items():
        try:
            future.result()
            log.info("worker created a topic", extra={"topic": topic})
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            if error.retriable():
                raise
            raise TopicCreationFailed(topic, error.str()) from None
    if known_by is not None:
        _wait_until_known(known_by, missing, timeout)


def _wait_until_known(client: Consumer, topics: list[str], timeout: float) -> None:
    """Wait until ``client``'s metadata has the new ``topics``, each partition with a leader: a consumer
    that subscribes before then takes them for unknown until its next metadata refresh (minutes)."""
    deadline = time.monotonic() + timeout
    while True:
        found = client.list_topics(timeout=timeout).topics
        if all(_ready(found.get(topic)) for topic in topics):
            return
        if time.monotonic() >= deadline:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"created topics {topics} not seen yet"))
        time.sleep(0.05)


def _ready(topic: Any) -> bool:
    # ``confluent_kafka.admin.TopicMetadata``, or None for a topic not in the metadata
    return (
        topic is not None
        and topic.error is None
        and bool(topic.partitions)
        and all(p.leader >= 0 and p.error is None for p in topic.partitions.values())
    )
