"""Prometheus metrics of the event store. Names and labels are part of the public API.

- ``tidings_sequencer_lag_seconds{schema}``: age of the oldest committed event still waiting for its
  event_number; it grows while a long or idle transaction holds the sequencing horizon back.
- ``tidings_sequencer_waiting_events{schema}``: committed events waiting for an event_number.
- ``tidings_sequencer_stalled{schema}``: 1 while committed events have waited over a second for a number.
- ``tidings_sequencer_moved{schema}``: 1 while the store holds transaction ids of another PostgreSQL cluster
  (moved by dump/restore or logical replication): nothing is numbered until ``tidings store rebase``.
- ``tidings_sequencer_numbered_events_total{schema}``: events numbered.
- ``tidings_events_appended_total{schema}``: events appended (committed or not: the store cannot know).
- ``tidings_relay_leader{schema,relay}``: 1 while this process is the relay's leader.
- ``tidings_relay_lag_events{schema,relay}``: numbered events the relay has not published yet.
- ``tidings_relay_lag_seconds{schema,relay}``: age of the newest published event while more wait, else 0.
- ``tidings_relay_last_published_event_number{schema,relay}``: the last event_number committed to Kafka.
- ``tidings_relay_published_events_total{schema,relay}``: events committed to Kafka.
- ``tidings_relay_transactions_total{schema,relay}``: Kafka transactions committed.
- ``tidings_relay_errors_total{schema,relay,kind}``: failures the relay retried or recovered from.
- ``tidings_relay_blocked{schema,relay}``: 1 while the leading relay cannot publish on (a problem of
  ``eventstore.relay_problems``; ``tidings relay status`` says which and what to do).
- ``tidings_relay_problems_total{schema,relay,verdict}``: problems met, by verdict.
- ``tidings_relay_foreign_messages_total{schema,relay}``: messages the relay did not publish found on its
  topics' tail and passed over.
- ``tidings_relay_republished_events_total{schema,relay}``: events published again because Kafka held
  fewer than the relay recorded (a topic recreated, Kafka restored from a backup).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = [
    "APPENDED",
    "COMMANDS_SENT",
    "COMMANDS_SET_ASIDE",
    "NUMBERED",
    "OUTBOX_OLDEST_SECONDS",
    "OUTBOX_UNSENT",
    "RELAY_BLOCKED",
    "RELAY_ERRORS",
    "RELAY_FOREIGN_MESSAGES",
    "RELAY_LAG_EVENTS",
    "RELAY_LAG_SECONDS",
    "RELAY_LAST_PUBLISHED",
    "RELAY_LEADER",
    "RELAY_PROBLEMS",
    "RELAY_PUBLISHED",
    "RELAY_REPUBLISHED",
    "RELAY_TRANSACTIONS",
    "SEQUENCER_LAG",
    "SEQUENCER_MOVED",
    "SEQUENCER_STALLED",
    "SEQUENCER_WAITING",
    "SENDER_ERRORS",
    "SENDER_LEADER",
]

SEQUENCER_LAG = Gauge(
    "tidings_sequencer_lag_seconds", "Age of the oldest committed event without an event_number", ["schema"]
)
SEQUENCER_WAITING = Gauge(
    "tidings_sequencer_waiting_events", "Committed events waiting for an event_number", ["schema"]
)
SEQUENCER_STALLED = Gauge(
    "tidings_sequencer_stalled",
    "1 while committed events wait and the sequencer cannot number them",
    ["schema"],
)
SEQUENCER_MOVED = Gauge(
    "tidings_sequencer_moved",
    "1 while the store holds another cluster's transaction ids and must be re-based",
    ["schema"],
)
NUMBERED = Counter("tidings_sequencer_numbered_events", "Events given an event_number", ["schema"])
APPENDED = Counter("tidings_events_appended", "Events appended by this process", ["schema"])

_RELAY = ["schema", "relay"]
RELAY_LEADER = Gauge("tidings_relay_leader", "1 while this process leads the relay", _RELAY)
RELAY_LAG_EVENTS = Gauge("tidings_relay_lag_events", "Numbered events not yet published to Kafka", _RELAY)
RELAY_LAG_SECONDS = Gauge(
    "tidings_relay_lag_seconds", "Age of the newest published event while more wait to be published", _RELAY
)
RELAY_LAST_PUBLISHED = Gauge(
    "tidings_relay_last_published_event_number", "The last event_number committed to Kafka", _RELAY
)
RELAY_PUBLISHED = Counter("tidings_relay_published_events", "Events committed to Kafka", _RELAY)
RELAY_TRANSACTIONS = Counter("tidings_relay_transactions", "Kafka transactions committed", _RELAY)
RELAY_ERRORS = Counter(
    "tidings_relay_errors", "Failures the relay retried or recovered from", [*_RELAY, "kind"]
)
RELAY_BLOCKED = Gauge("tidings_relay_blocked", "1 while the leading relay cannot publish on", _RELAY)
RELAY_PROBLEMS = Counter(
    "tidings_relay_problems", "Problems that stopped the relay's publication", [*_RELAY, "verdict"]
)
RELAY_FOREIGN_MESSAGES = Counter(
    "tidings_relay_foreign_messages", "Messages the relay did not publish, passed over on its tail", _RELAY
)
RELAY_REPUBLISHED = Counter(
    "tidings_relay_republished_events",
    "Events published again because Kafka held fewer than recorded",
    _RELAY,
)

_SENDER = ["schema", "sender"]
SENDER_LEADER = Gauge(
    "tidings_command_sender_leader", "1 while this process sends the command outbox", _SENDER
)
COMMANDS_SENT = Counter("tidings_commands_sent", "Outbox commands committed to Kafka", _SENDER)
COMMANDS_SET_ASIDE = Counter(
    "tidings_commands_set_aside",
    "Outbox commands Kafka can never accept, set aside (`tidings outbox list`)",
    _SENDER,
)
SENDER_ERRORS = Counter(
    "tidings_command_sender_errors", "Failures the command sender retried, by kind", [*_SENDER, "kind"]
)
OUTBOX_UNSENT = Gauge("tidings_command_outbox_unsent", "Outbox commands waiting to be sent", ["schema"])
OUTBOX_OLDEST_SECONDS = Gauge(
    "tidings_command_outbox_oldest_seconds", "Age of the oldest outbox command waiting to be sent", ["schema"]
)
