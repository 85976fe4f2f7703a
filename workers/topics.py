"""Create the topics a worker reads or writes when they do not exist yet.

The relay creates the events topics when it first publishes; a worker started before it (or a handler
that repartitions, or dead-letters) creates them with the same settings, so it can subscribe at once.
Like the relay, it keeps every event (``retention.ms=-1``): handlers may replay from the origin.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from eventstore.relay import TopicCreationFailed

if TYPE_CHECKING:
    from workers.app import WorkerConfig

__all__ = ["ensure_topics"]

log = logging.getLogger("workers.topics")


def ensure_topics(config: WorkerConfig, topics: Sequence[str], timeout: float = 30.0) -> None:
    """Create those of ``topics`` that are missing.

    Raises:
        TopicCreationFailed: Kafka refused to create one (its reason is in the message).
        KafkaException: Kafka did not answer within ``timeout``.
    """
    admin = AdminClient(dict(config.connection()))
    existing = admin.list_topics(timeout=timeout).topics
    missing = [topic for topic in dict.fromkeys(topics) if topic not in existing]
    if not missing:
        return
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
