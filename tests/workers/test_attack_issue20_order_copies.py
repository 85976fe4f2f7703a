"""Attack: a handled event's headers over other bytes (issue 20, case 3).

What the store confirms of a message is its event_id at its number. A message carrying a handled
event's headers over other bytes passed that check and was skipped as a redelivery; a repeat's bytes
are now compared with the store's too.
"""

from __future__ import annotations

from eventstore.postgres.store import PostgresEventStore
from tests.workers.test_attack_issue20_order_tombstones import _tombstones_among_good_traffic
from tidings.pytest_plugin import KafkaNamespace


def test_a_handled_events_headers_with_other_bytes_are_parked_not_skipped(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace
) -> None:
    """A reused event_number with different content is parked and reported, not skipped: a message
    with a handled event's headers (number, event_id, fingerprint) and other bytes was taken as a
    redelivery of that event (only the event_id was compared) and counted already_seen."""
    _tombstones_among_good_traffic(
        event_store, kafka_namespace, with_a_handled_events_headers=True, value=b'{"garbage": true}'
    )
