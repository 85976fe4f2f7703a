"""Where the relay sends each event: its Kafka topic and its message key.

By default every event goes to one topic per application (``<app>.events``), keyed by its stream id, so
a stream's events stay in order on one partition. Rules per event type, then per stream category (the
stream id up to its first ``-``: ``account`` for ``account-42``), choose another topic, another key, or
both.

A key longer than ``MAX_KEY_BYTES`` (a key function's, or a metadata field's) is replaced by its SHA-256
digest, ``sha256:<hex>``: the same key still lands on the same partition, in order, and every message
stays within the size the Kafka limits are set for (``eventstore.kafka_limits``).

Example::

    routing = Routing(
        "bank.events",
        by_category={"transfer": Route(key="correlation_id")},
        by_event_type={"bank.AuditNoted": Route(topic="bank.audit")},
    )
    topic, key = routing.route(recorded_event)
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from eventstore.errors import ConfigurationError
from eventstore.records import RecordedEvent

__all__ = [
    "KEY_SOURCES",
    "MAX_KEY_BYTES",
    "KeySource",
    "Routable",
    "Route",
    "Routing",
    "stream_category",
    "validate_topic",
]

log = logging.getLogger("eventstore.relay")

KeySource = str | Callable[[RecordedEvent], "str | bytes | None"]
"""What the key is made of: one of ``KEY_SOURCES``, ``metadata.<field>``, or a function of the event."""


class Routable(Protocol):
    """What routing reads of an event: a ``RecordedEvent``, or the relay's lighter row of one."""

    @property
    def stream_id(self) -> str: ...
    @property
    def event_type(self) -> str: ...
    @property
    def metadata(self) -> bytes: ...
    @property
    def event_id(self) -> object: ...
    @property
    def causation_id(self) -> object: ...
    @property
    def correlation_id(self) -> object: ...


MAX_KEY_BYTES = 1024
"""The longest message key; longer ones are replaced by their digest. Stream ids (255 characters) fit."""

KEY_SOURCES = ("stream_id", "category", "event_type", "event_id", "correlation_id", "causation_id")

_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def validate_topic(name: str) -> str:
    """``name`` if Kafka accepts it as a topic name; a ``ConfigurationError`` saying why if not."""
    if not _TOPIC.fullmatch(name) or name in (".", ".."):
        raise ConfigurationError(
            f"{name!r} is not a Kafka topic name: use 1 to 249 of the characters A-Z a-z 0-9 . _ -"
        )
    return name


def stream_category(stream_id: str) -> str:
    """The stream's category: its id up to the first ``-`` (the whole id if it has none)."""
    return stream_id.partition("-")[0]


@dataclass(frozen=True, slots=True)
class Route:
    """A routing rule's answer: the topic (None: the default one) and where the key comes from."""

    topic: str | None = None
    key: KeySource | None = None
    """None: the routing's default key."""

    def __post_init__(self) -> None:
        if self.topic is not None:
            validate_topic(self.topic)
        if self.key is not None:
            _key_function(self.key)


class Routing:
    """Chooses each event's topic and key; rules for an event type win over rules for a category."""

    def __init__(
        self,
        default_topic: str,
        *,
        key: KeySource = "stream_id",
        by_event_type: Mapping[str, Route] | None = None,
        by_category: Mapping[str, Route] | None = None,
    ) -> None:
        self.default_topic = validate_topic(default_topic)
        self._key_sources = {
            key if isinstance(key, str) else None,
            *(
                route.key if isinstance(route.key, str) else None
                for route in (*(by_event_type or {}).values(), *(by_category or {}).values())
                if route.key is not None
            ),
        }
        self.needs_recorded_events = any(
            callable(source)
            for source in (
                key,
                *(r.key for r in (*(by_event_type or {}).values(), *(by_category or {}).values())),
            )
        )
        """Whether a key function of the user's is involved: it is handed a full ``RecordedEvent``."""
        self._default_key = _key_function(key)
        self._by_event_type = self._resolved(by_event_type or {})
        self._by_category = self._resolved(by_category or {})

    def _resolved(self, rules: Mapping[str, Route]) -> dict[str, tuple[str, Callable[[Routable], bytes]]]:
        """Each rule's topic and key function, with the routing's defaults where the rule gives none."""
        return {
            name: (
                route.topic or self.default_topic,
                _key_function(route.key) if route.key else self._default_key,
            )
            for name, route in rules.items()
        }

    @classmethod
    def from_document(cls, document: Mapping[str, object], *, where: str = "routing") -> Routing:
        """A routing from its TOML (or JSON) form; errors name ``where`` and the offending entry.

        Example (TOML)::

            default_topic = "bank.events"
            key = "stream_id"
            [event_types."bank.AuditNoted"]
            topic = "bank.audit"
            [categories.transfer]
            key = "correlation_id"
        """
        known = {"default_topic", "key", "event_types", "categories"}
        unknown = sorted(set(document) - known)
        if unknown:
            raise ConfigurationError(f"{where}: unknown entries {unknown}; expected {sorted(known)}")
        topic = document.get("default_topic")
        if not isinstance(topic, str):
            raise ConfigurationError(f"{where}: default_topic must be a topic name")

        def rules(section: str) -> dict[str, Route]:
            table = document.get(section, {})
            if not isinstance(table, Mapping):
                raise ConfigurationError(f"{where}: [{section}] must be a table")
            found = {}
            for name, rule in table.items():
                if not isinstance(rule, Mapping) or set(rule) - {"topic", "key"}:
                    raise ConfigurationError(f"{where}: [{section}.{name}] may only set topic and key")
                try:
                    found[name] = Route(topic=rule.get("topic"), key=rule.get("key"))
                except ConfigurationError as exc:
                    raise ConfigurationError(f"{where}: [{section}.{name}]: {exc}") from None
            return found

        key = document.get("key", "stream_id")
        if not isinstance(key, str):
            raise ConfigurationError(f"{where}: key must be a key source name")
        return cls(topic, key=key, by_event_type=rules("event_types"), by_category=rules("categories"))

    def topics(self) -> list[str]:
        """Every topic some event may go to, default first."""
        found = [self.default_topic]
        for topic, _ in (*self._by_event_type.values(), *self._by_category.values()):
            if topic not in found:
                found.append(topic)
        return found

    def topic_rules(self) -> tuple[dict[str, str], dict[str, str]]:
        """The topic of each event type, and of each stream category, that has a rule of its own (every
        other event goes to ``default_topic``): what a reader of some topics needs to tell which events
        it will see (``eventstore.acknowledgements.Carried``)."""
        return (
            {name: topic for name, (topic, _) in self._by_event_type.items()},
            {name: topic for name, (topic, _) in self._by_category.items()},
        )

    def keys_by(self, source: str) -> bool:
        """Whether every event is keyed by ``source`` (a key source name), whatever its topic."""
        return self._key_sources == {source}

    def route(self, event: Routable) -> tuple[str, bytes]:
        """The event's topic and message key."""
        rule = self._by_event_type.get(event.event_type)
        if rule is None and self._by_category:
            rule = self._by_category.get(stream_category(event.stream_id))
        topic, key = rule if rule is not None else (self.default_topic, self._default_key)
        value = key(event)
        if len(value) > MAX_KEY_BYTES:
            return topic, b"sha256:" + hashlib.sha256(value).hexdigest().encode()
        return topic, value


def _key_function(source: KeySource) -> Callable[[Routable], bytes]:
    if callable(source):
        return _from_function(source)
    if source == "stream_id":
        return _by_stream_id
    if source == "category":
        return lambda event: stream_category(event.stream_id).encode()
    if source == "event_type":
        return lambda event: event.event_type.encode()
    if source in ("event_id", "correlation_id", "causation_id"):
        return _from_attribute(source)
    if isinstance(source, str) and source.startswith("metadata.") and len(source) > len("metadata."):
        return _from_metadata(source.removeprefix("metadata."))
    raise ConfigurationError(
        f"unknown key source {source!r}: use one of {', '.join(KEY_SOURCES)}, metadata.<field>, "
        "or a function of the recorded event"
    )


def _by_stream_id(event: Routable) -> bytes:
    return event.stream_id.encode()


def _from_attribute(name: str) -> Callable[[Routable], bytes]:
    def key(event: Routable) -> bytes:
        value = getattr(event, name)
        # An event without a correlation (or causation) id keeps its stream's order.
        return str(value).encode() if value is not None else event.stream_id.encode()

    return key


def _from_metadata(field: str) -> Callable[[Routable], bytes]:
    def key(event: Routable) -> bytes:
        try:
            value = json.loads(event.metadata).get(field)
        except (ValueError, AttributeError, RecursionError):
            value = None
        if value is None:
            log.warning(
                "an event's metadata has no key field; keyed by its stream id",
                extra={"field": field, "event_id": str(event.event_id), "stream_id": event.stream_id},
            )
            return event.stream_id.encode()
        return str(value).encode()

    return key


def _from_function(
    function: Callable[[RecordedEvent], str | bytes | None],
) -> Callable[[Routable], bytes]:
    def key(event: Routable) -> bytes:
        # The relay hands over a RecordedEvent whenever a key function is configured (needs_recorded_events).
        value = function(event)  # type: ignore[arg-type]
        if value is None:
            return event.stream_id.encode()
        return value if isinstance(value, bytes) else value.encode()

    return key
