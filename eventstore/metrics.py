"""Prometheus metrics of the event store. Names and labels are part of the public API.

- ``tidings_sequencer_lag_seconds{schema}``: age of the oldest committed event still waiting for its
  event_number; it grows while a long or idle transaction holds the sequencing horizon back.
- ``tidings_sequencer_waiting_events{schema}``: committed events waiting for an event_number.
- ``tidings_sequencer_stalled{schema}``: 1 while committed events have waited over a second for a number.
- ``tidings_sequencer_numbered_events_total{schema}``: events numbered.
- ``tidings_events_appended_total{schema}``: events appended (committed or not: the store cannot know).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = ["APPENDED", "NUMBERED", "SEQUENCER_LAG", "SEQUENCER_STALLED", "SEQUENCER_WAITING"]

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
NUMBERED = Counter("tidings_sequencer_numbered_events", "Events given an event_number", ["schema"])
APPENDED = Counter("tidings_events_appended", "Events appended by this process", ["schema"])
