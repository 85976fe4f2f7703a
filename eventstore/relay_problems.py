"""What stops a relay from publishing, each with what the operator can do about it.

A relay that meets one of these keeps its leadership, publishes nothing past the point it is sure of,
and says so: a log line at ERROR with the problem's type, the ``tidings_relay_blocked`` gauge, and the
verdict ``tidings relay status`` shows (recorded in the ``relays`` row, since the relay and the operator's
command run in different processes). It tries again every ``RelayConfig.problem_retry`` seconds, so a
problem fixed outside (a broker limit raised, an operator's ``resume-after``) ends without a restart.
(docs/relay.md, "Failure modes"; docs/decisions/0013-the-relays-tail-trust.md)
"""

from __future__ import annotations

from eventstore.errors import EventStoreError

__all__ = [
    "EventUnpublishable",
    "EventUnroutable",
    "ForeignMessages",
    "KafkaAheadOfStore",
    "RelayProblem",
    "TailMismatch",
    "TailUnconfirmed",
]


class RelayProblem(EventStoreError):
    """The relay cannot publish on until this is resolved; nothing is lost meanwhile."""

    verdict = "problem"

    def __init__(self, message: str, event_number: int | None = None) -> None:
        super().__init__(message)
        self.event_number = event_number


class KafkaAheadOfStore(RelayProblem):
    """The topics hold this store's events numbered above the store's newest: the store lost its tail."""

    verdict = "kafka_ahead"

    def __init__(self, kafka: int, store: int, agreed: int | None = None) -> None:
        super().__init__(
            f"Kafka holds this store's events up to event_number {kafka}, but the store's newest is {store}: "
            "PostgreSQL lost a tail Kafka already has (a failover to an asynchronous replica, a "
            "point-in-time restore, a crash with synchronous_commit=off). Consumers have seen events the "
            "store no longer holds, and the store gives their numbers to new events. Restore the lost events "
            f"if you can; otherwise decide where the relay goes on. {_agreement(agreed)}",
            kafka,
        )
        self.kafka = kafka
        self.store = store
        self.agreed = agreed

    def agreeing_up_to(self, agreed: int) -> KafkaAheadOfStore:
        """The same problem, saying where Kafka and the store last agree."""
        return KafkaAheadOfStore(self.kafka, self.store, agreed)


class TailMismatch(RelayProblem):
    """A message of this store's relay names another event than the store holds at its number."""

    verdict = "tail_mismatch"

    def __init__(
        self, event_number: int, kafka_event_id: str, store_event_id: str, agreed: int | None = None
    ) -> None:
        super().__init__(
            f"Kafka holds event {kafka_event_id} as event_number {event_number}, but the store holds "
            f"{store_event_id} there: the store lost events Kafka has and numbered new ones since (a "
            "failover, a restore), or a copy of this store publishes to the same topics. Nothing is "
            f"published until an operator decides. {_agreement(agreed)}",
            event_number,
        )
        self.kafka_event_id = kafka_event_id
        self.store_event_id = store_event_id
        self.agreed = agreed

    def agreeing_up_to(self, agreed: int) -> TailMismatch:
        """The same problem, saying where Kafka and the store last agree."""
        return TailMismatch(self.event_number or 0, self.kafka_event_id, self.store_event_id, agreed)


def _agreement(agreed: int | None) -> str:
    if agreed is None:
        return (
            "`tidings relay resume-after N` publishes the store's events after N: choose N as the last "
            "event_number at which Kafka and the store hold the same event"
        )
    return (
        f"Kafka and the store hold the same events up to event_number {agreed}: "
        f"`tidings relay resume-after {agreed}` publishes the store's events after it (consumers then "
        "meet some event_numbers a second time, with other events)"
    )


class ForeignMessages(RelayProblem):
    """Another store (or another relay) publishes to this relay's topics."""

    verdict = "foreign_store"

    def __init__(self, origins: list[str], topics: list[str], own_store: str = "") -> None:
        stores = sorted({origin.split(",")[0].removeprefix("store ") for origin in origins})
        others = [store for store in stores if store != own_store]
        remedy = (
            "If those messages are known leftovers (a test, an old copy), start the relay with "
            + " ".join(f"--ignore-store {store}" for store in others)
            if others
            else "Another relay of this store publishes there: give the relays' routings topics of their own"
        )
        super().__init__(
            f"topics {', '.join(sorted(topics))} hold messages of {'; '.join(sorted(set(origins)))}: two "
            "stores (or two relays) publishing to one topic mix two histories that no consumer can tell "
            f"apart. Give each store its own app name (`tidings relay --app`) or routing. {remedy}"
        )
        self.stores = stores


class TailUnconfirmed(RelayProblem):
    """The topics were written to, but none of this relay's messages is left to say where it stopped."""

    verdict = "tail_unconfirmed"

    def __init__(self, recorded: int) -> None:
        super().__init__(
            "the relay's topics have held messages but none of this relay's is left (retention removed "
            "them, or the topics were emptied), so Kafka cannot confirm where publication stopped; the relay "
            f"recorded publishing up to event_number {recorded} (written at most a second apart, so possibly "
            f"a little lower). Decide: `tidings relay resume-after {recorded}` goes on from the recorded "
            "position, `tidings relay resume-after 0` publishes every event again",
            recorded,
        )


class EventUnroutable(RelayProblem):
    """The routing (a key function of the user's), or building the event's message, raised."""

    verdict = "blocked"

    def __init__(self, event_number: int, event_id: str, stream_id: str, error: BaseException) -> None:
        super().__init__(
            f"routing event_number {event_number} (event {event_id} of stream {stream_id}) or building "
            f"its message raised {type(error).__name__}: {error}. Events after it wait, in order: fix the "
            "routing (its key function) and restart the relay",
            event_number,
        )


class EventUnpublishable(RelayProblem):
    """Kafka refuses an event whatever the batch (too large for the topic, not authorised, no topic...)."""

    verdict = "blocked"

    def __init__(
        self, event_number: int, event_id: str, topic: str, size: int, reason: str, code: str = ""
    ) -> None:
        super().__init__(
            f"Kafka refuses event_number {event_number} (event {event_id}, {size} bytes with its headers) "
            f"on topic {topic}: {reason}. Events after it wait, in order, and the relay tries again: "
            + _remedy(code, topic),
            event_number,
        )
        self.topic = topic


def _remedy(code: str, topic: str) -> str:
    if code in ("TOPIC_AUTHORIZATION_FAILED", "POLICY_VIOLATION"):
        return f"grant the relay's principal Write on topic {topic} (or change the broker's policy)"
    if code in ("UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC"):
        return (
            f"topic {topic} does not exist (deleted under the relay?): create it, or restart the relay, "
            "which creates missing topics unless --no-create-topics"
        )
    if code in ("MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE"):
        return (
            "raise the topic's max.message.bytes (`kafka-configs.sh --alter --entity-type topics "
            f"--entity-name {topic} --add-config max.message.bytes=N`)"
        )
    return "fix what the reason names"
