"""Create the topics a worker reads or writes when they do not exist yet.

The relay creates the events topics when it first publishes; a worker started before it (or a handler
that repartitions, or dead-letters) creates them with the same settings, so it can subscribe at once.
Like the relay, it keeps every event (``retention.ms=-1``): handlers may replay from the origin, and
it sets ``max.message.bytes`` for the largest event the store accepts, dead-lettered
(``dead_letter_limits``, docs/relay.md "Message sizes").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from eventstore.kafka_limits import MessageLimits, check_topic_limits, message_bytes
from eventstore.relay import TopicCreationFailed

if TYPE_CHECKING:
    from workers.app import WorkerConfig

__all__ = [
    "DEAD_LETTER_HEADER_BYTES",
    "MAX_REASON_BYTES",
    "dead_letter_limits",
    "ensure_topic_limits",
    "ensure_topics",
]

log = logging.getLogger("workers.topics")

MAX_REASON_BYTES = 4096
"""The longest reason a dead letter carries (``tidings_error``); a longer one is cut."""
DEAD_LETTER_HEADER_BYTES = len("tidings_error") + MAX_REASON_BYTES + len("tidings_source") + 300 + 20
"""What a dead letter adds to the relay's message: its reason, and where it came from (topic, partition,
offset), with their lengths."""


def dead_letter_limits(config: WorkerConfig, topics: Sequence[str]) -> MessageLimits:
    """The message size limits of a worker's producer and topics: the relay's largest message (for an
    event the store accepts, published to ``topics``), with a dead letter's headers.

    Raises:
        ConfigurationError: the worker's Kafka settings set a smaller ``message.max.bytes``.
    """
    largest = message_bytes(config.store.config.max_event_bytes, topics) + DEAD_LETTER_HEADER_BYTES
    return MessageLimits.of(largest, config.kafka)


def ensure_topics(
    config: WorkerConfig,
    topics: Sequence[str],
    timeout: float = 30.0,
    known_by: Consumer | None = None,
    limits: MessageLimits | None = None,
) -> None:
    """Create those of ``topics`` that are missing.

    ``known_by``: a client already connected (the worker's consumer), asked which topics exist instead
    of connecting an admin client; one is connected only to create what is missing.
    ``limits``: the ``max.message.bytes`` created topics get (default: ``dead_letter_limits``).

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
    settings = (limits or dead_letter_limits(config, topics)).topic_config({"retention.ms": "-1"})
    futures = admin.create_topics(
        [NewTopic(topic, config.partitions, config.replication_factor, config=settings) for topic in missing],
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


def ensure_topic_limits(
    config: WorkerConfig, topics: Sequence[str], limits: MessageLimits, who: str, timeout: float = 30.0
) -> None:
    """Raise the ``max.message.bytes`` of those of ``topics`` (which the worker writes) that take smaller
    messages than ``limits`` need.

    Raises:
        TopicLimitTooSmall: raising a limit failed (the message names the command that does it).
        KafkaException: Kafka did not answer within ``timeout``.
    """
    check_topic_limits(
        AdminClient(dict(config.connection())),
        topics,
        limits,
        raise_limits=True,
        bootstrap_servers=config.bootstrap_servers,
        timeout=timeout,
        who=who,
    )


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
