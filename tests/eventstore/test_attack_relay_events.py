"""Attacks on guarantee 3 through what an event carries (issue 19): nothing the store accepts may stop
publication silently. Real PostgreSQL, real Kafka.
"""

from __future__ import annotations

from eventstore import ANY, EventData, PostgresEventStore
from eventstore.relay import Relay, RelayConfig
from eventstore.routing import Routing
from tests.eventstore.relay_support import append_events, relay_verdict, wait_until
from tidings.pytest_plugin import KafkaNamespace

TRACEPARENT = b'"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"'


def test_metadata_nested_too_deep_for_the_json_parser_does_not_stop_publication_silently(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    # The relay copies the W3C trace context out of the metadata when it mentions "traceparent": it
    # parses the metadata as JSON. Metadata nested 100 000 deep (valid JSON, 200 kB, accepted by the
    # store, which stores bytes) makes the parser raise RecursionError, which is not a ValueError.
    topic = kafka_namespace.topic("events")
    relay = Relay(event_store, RelayConfig(kafka_namespace.bootstrap_servers, routing=Routing(topic)))
    before = append_events(event_store, streams=2, per_stream=2)
    relay.start()
    try:
        wait_until(lambda: relay.last_published == len(before), 30, "the relay")
        deep = b"{" + TRACEPARENT + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        event_store.append_to_stream("account-0", ANY, [EventData("Deep", b"d", metadata=deep)])
        after = append_events(event_store, streams=2, per_stream=1, prefix="after")
        total = len(before) + 1 + len(after)
        wait_until(
            lambda: relay.last_published == total or relay_verdict(event_store) == "blocked",
            30,
            "the relay publishes the event, or stops on it and says so",
        )
        assert relay._thread is not None
        assert relay._thread.is_alive()
        assert relay.leading.is_set()
    finally:
        relay.stop()
