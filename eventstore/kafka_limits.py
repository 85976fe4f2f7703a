"""How large a Kafka message gets for an event the store accepts, and the Kafka limits that follow.

The store accepts events of up to ``StoreConfig.max_event_bytes`` of data and metadata. The relay's
message for one carries the data as its value, the metadata again as a header, the event's identity
and place in more headers (``eventstore.relay.headers``) and its routing key. Every part besides the
data and the metadata is bounded: the store limits stream ids, event types and schema ids to 255
characters (``eventstore.streams``), routing limits keys to ``MAX_KEY_BYTES``, the relay repeats trace
context only at its W3C sizes, and relay names are limited here. So one figure, ``message_bytes``,
bounds every message the relay produces, and from it:

- the producer's ``message.max.bytes`` (librdkafka refuses a larger message in ``produce()``; its
  default is 1,000,000) is at least ``message_bytes``;
- each topic's ``max.message.bytes`` (the broker refuses a larger record batch; the broker's default
  is ``message.max.bytes`` = 1,048,588) is at least the largest record batch that producer builds,
  ``MessageLimits.batch``.

Compression does not raise these figures: librdkafka sends a batch uncompressed when compressing makes it
larger (incompressible data), and the broker keeps the producer's compression. Only a topic whose
``compression.type`` names another codec makes the broker compress again, and check the result:
``RECOMPRESSION`` allows for that.

Without these limits agreeing, one large event wedges publication: Kafka refuses its message every time
the relay publishes it (docs/relay.md, "Message sizes").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource

from eventstore.errors import ConfigurationError, EventStoreError
from eventstore.routing import MAX_KEY_BYTES
from eventstore.streams import MAX_NAME_LENGTH, MAX_STREAM_ID_LENGTH

__all__ = [
    "BATCH_OVERHEAD",
    "MAX_MESSAGE_BYTES",
    "RECORD_OVERHEAD",
    "RELAY_NAME_BYTES",
    "SPARE_HEADER_BYTES",
    "TRACEPARENT_BYTES",
    "TRACESTATE_BYTES",
    "MessageLimits",
    "TopicLimitTooSmall",
    "check_topic_limits",
    "message_bytes",
]

log = logging.getLogger("eventstore.relay")

RECORD_OVERHEAD = 36
"""What librdkafka adds to key, value and headers when it checks a message against message.max.bytes:
the record's length, attributes, timestamp and offset deltas, key and value lengths and header count."""
BATCH_OVERHEAD = 61
"""A record batch's header, which the broker counts against max.message.bytes."""
TRACEPARENT_BYTES = 55
"""A W3C ``traceparent`` (version 00); the relay repeats no longer one as a header."""
TRACESTATE_BYTES = 512
"""The ``tracestate`` length W3C asks every vendor to propagate; the relay repeats no longer one."""
RELAY_NAME_BYTES = 256
"""The longest relay name (UTF-8): its messages carry it."""
SPARE_HEADER_BYTES = 1024
"""Room for the relay's own small headers (store id, relay epoch...) and any added later: a test checks
the headers of a largest event against ``message_bytes``."""
RECOMPRESSION = 128
"""A topic that compresses again with another codec may grow an incompressible batch: by 1/128th and
4 KiB at most (gzip, snappy, lz4 and zstd all stay well within that)."""
MAX_MESSAGE_BYTES = 100_000_000 - 64 * 1024
"""Kafka clients take responses of at most 100,000,000 bytes by default (``receive.message.max.bytes``):
a larger event could be published but never read back."""

_LIBRDKAFKA_BATCH_SIZE = 1_000_000  # ``batch.size`` when not set
_VARINTS = 10  # a header's name and value lengths, five bytes each at most
_UTF8 = 4  # bytes per character at most
_NUMBER = 20  # a 64-bit integer as text
_UUID = 36
_FIELD = _UTF8 * max(MAX_STREAM_ID_LENGTH, MAX_NAME_LENGTH)
# Each header the relay writes for every event and the longest value it can have; ``metadata`` is
# counted with the data (max_event_bytes bounds the two together).
_HEADERS = {
    "event_id": _UUID,
    "event_type": _FIELD,
    "event_number": _NUMBER,
    "stream_id": _FIELD,
    "stream_version": _NUMBER,
    "created_at": len("2026-11-22T23:40:01.123456+00:00"),
    "schema_id": _FIELD,
    "metadata": 0,
    "causation_id": _UUID,
    "correlation_id": _UUID,
    "traceparent": TRACEPARENT_BYTES,
    "tracestate": TRACESTATE_BYTES,
    "tidings.relay": RELAY_NAME_BYTES,
}
_PREVIOUS = "tidings.previous"


def message_bytes(max_event_bytes: int, topics: Sequence[str]) -> int:
    """The largest message, as librdkafka counts it, the relay produces for an event the store accepts.

    ``topics``: every topic of the relay's routing (the ``tidings.previous`` header names each).

    Example::

        message_bytes(1024 * 1024, ["bank.events"])  # 1 MiB and some 6 KiB of headers and key
    """
    headers = sum(len(name) + value + _VARINTS for name, value in _HEADERS.items())
    previous = len(_PREVIOUS) + _VARINTS + sum(len(topic.encode()) + len("=,") + _NUMBER for topic in topics)
    return RECORD_OVERHEAD + MAX_KEY_BYTES + max_event_bytes + headers + previous + SPARE_HEADER_BYTES


@dataclass(frozen=True, slots=True)
class MessageLimits:
    """The producer's ``message.max.bytes`` and what its topics' ``max.message.bytes`` must be.

    Example::

        limits = MessageLimits.of(message_bytes(store.config.max_event_bytes, topics), kafka_settings)
        Producer({**kafka_settings, **limits.producer_settings()})

    Attributes:
        message: the producer's ``message.max.bytes``: the largest message, or the user's larger value.
        batch: the largest record batch the producer builds (a topic takes at least this).
        compression: the producer's ``compression.type``.
    """

    message: int
    batch: int
    compression: str

    @classmethod
    def of(
        cls, largest_message: int, settings: Mapping[str, object], compression: str = "none"
    ) -> MessageLimits:
        """The limits for a producer with librdkafka ``settings`` that must send ``largest_message``.

        Raises:
            ConfigurationError: ``settings`` hold a ``message.max.bytes`` below ``largest_message``, or
                the message is larger than Kafka clients read back (``MAX_MESSAGE_BYTES``).
        """
        if largest_message > MAX_MESSAGE_BYTES:
            raise ConfigurationError(
                f"events of max_event_bytes make Kafka messages of up to {largest_message} bytes, more than "
                f"Kafka clients read back ({MAX_MESSAGE_BYTES}): lower StoreConfig.max_event_bytes and store "
                "large payloads elsewhere, referenced from the event"
            )
        message = largest_message
        if "message.max.bytes" in settings:
            message = _setting(settings, "message.max.bytes")
            if message < largest_message:
                raise ConfigurationError(
                    f"message.max.bytes={message} is below the largest message the store's events make "
                    f"({largest_message} bytes, from StoreConfig.max_event_bytes): remove it from the Kafka "
                    f"settings (it is set for you), or set it to at least {largest_message}"
                )
        batch_size = _setting(settings, "batch.size") if "batch.size" in settings else _LIBRDKAFKA_BATCH_SIZE
        # librdkafka fills a batch up to min(message.max.bytes, batch.size), and a larger message goes alone.
        batch = BATCH_OVERHEAD + max(largest_message, min(message, batch_size))
        codec = settings.get("compression.type", settings.get("compression.codec", compression))
        return cls(message, batch, str(codec))

    def producer_settings(self) -> dict[str, int]:
        return {"message.max.bytes": self.message}

    def topic_needs(self, compression_type: str = "producer") -> int:
        """The ``max.message.bytes`` a topic of ``compression.type`` needs for the producer's batches."""
        if compression_type in ("producer", "uncompressed", self.compression):
            return self.batch
        return self.batch + self.batch // RECOMPRESSION + 4096

    def topic_config(self, config: Mapping[str, str]) -> dict[str, str]:
        """``config`` for a topic to create, with ``max.message.bytes`` large enough.

        Raises:
            ConfigurationError: ``config`` sets a smaller ``max.message.bytes``.
        """
        needed = self.topic_needs(config.get("compression.type", "producer"))
        given = config.get("max.message.bytes")
        if given is not None and _setting(config, "max.message.bytes") < needed:
            raise ConfigurationError(
                f"topic_config sets max.message.bytes={given}, below the {needed} bytes the largest event "
                "the store accepts needs (StoreConfig.max_event_bytes): remove it (it is set for you), or "
                f"set it to at least {needed}"
            )
        return {**config, "max.message.bytes": given or str(needed)}


class TopicLimitTooSmall(EventStoreError):
    """A topic takes smaller messages than the largest event the store accepts makes (its
    ``max.message.bytes``), and it may not be changed, or changing it failed."""

    def __init__(self, topic: str, limit: int, needed: int, bootstrap_servers: str, reason: str = "") -> None:
        self.topic, self.limit, self.needed = topic, limit, needed
        self.command = (
            f"kafka-configs.sh --bootstrap-server {bootstrap_servers} --alter --entity-type topics "
            f"--entity-name {topic} --add-config max.message.bytes={needed}"
        )
        failed = f"; raising it failed: {reason}" if reason else ""
        super().__init__(
            f"topic {topic} takes messages of at most {limit} bytes (max.message.bytes), but the largest "
            f"event the store accepts (StoreConfig.max_event_bytes) makes one of up to {needed}{failed}. "
            f"Raise the topic's limit (`{self.command}`), let the relay manage its topics "
            "(create_topics=True, `tidings relay --create-topics`), or lower max_event_bytes"
        )


def check_topic_limits(
    admin: AdminClient,
    topics: Sequence[str],
    limits: MessageLimits,
    *,
    raise_limits: bool,
    bootstrap_servers: str,
    timeout: float,
    who: str,
) -> None:
    """Check that each of ``topics`` takes the producer's largest batch; with ``raise_limits``, raise the
    limit of one that does not (logged), else refuse.

    A topic's effective limit is its own ``max.message.bytes``, else the broker's ``message.max.bytes``.
    A client not allowed to read topic configurations cannot check: it says so and goes on (Kafka then
    refuses a message too large, which the relay reports as the event that stops publication).

    Raises:
        TopicLimitTooSmall: a topic's limit is too small and may not, or could not, be raised.
        KafkaException: Kafka did not answer (retriable).
    """
    resources = [ConfigResource(ConfigResource.Type.TOPIC, topic) for topic in topics]
    too_small: dict[str, tuple[int, int]] = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        try:
            entries = future.result(timeout=timeout)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.retriable() or error.code() == KafkaError._TIMED_OUT:
                raise
            log.warning(
                "cannot read a topic's configuration to check its message size limit",
                extra={"client": who, "topic": resource.name, "error": error.str()},
            )
            continue
        limit = int(entries["max.message.bytes"].value)
        compression = entries["compression.type"].value if "compression.type" in entries else "producer"
        needed = limits.topic_needs(compression or "producer")
        if limit < needed:
            too_small[resource.name] = (limit, needed)
    if not too_small:
        return
    if not raise_limits:
        topic, (limit, needed) = next(iter(too_small.items()))
        raise TopicLimitTooSmall(topic, limit, needed, bootstrap_servers)
    altered = admin.incremental_alter_configs(
        [
            ConfigResource(
                ConfigResource.Type.TOPIC,
                topic,
                incremental_configs=[
                    ConfigEntry("max.message.bytes", str(needed), incremental_operation=AlterConfigOpType.SET)
                ],
            )
            for topic, (_, needed) in too_small.items()
        ],
        request_timeout=timeout,
    )
    for resource, future in altered.items():
        limit, needed = too_small[resource.name]
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            error = exc.args[0]
            if error.retriable() or error.code() == KafkaError._TIMED_OUT:
                raise
            raise TopicLimitTooSmall(resource.name, limit, needed, bootstrap_servers, error.str()) from None
        log.warning(
            "raised a topic's max.message.bytes to take the largest event the store accepts",
            extra={"client": who, "topic": resource.name, "from": limit, "to": needed},
        )


def _setting(settings: Mapping[str, object], name: str) -> int:
    value = settings[name]
    try:
        return int(str(value))
    except ValueError:
        raise ConfigurationError(f"{name} must be a number of bytes, got {value!r}") from None
