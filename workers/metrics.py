"""Prometheus metrics of the workers. Names and labels are part of the public API.

- ``tidings_handler_events_total{handler,outcome}``: events by outcome: handled, skipped (the error
  policy said Skip), parked, dead_lettered, already_seen (a redelivery), filtered (before start_from or
  another stream than subscribe_to).
- ``tidings_handler_errors_total{handler,kind}``: failures: handler (handle raised), undecodable,
  kafka, postgres.
- ``tidings_handler_parked_events{handler}``: events parked now.
- ``tidings_handler_lag_messages{handler,topic,partition}``: messages of the partition not handled yet.
- ``tidings_handler_handle_seconds{handler}``: time in ``handle`` (per event, or per batch).
- ``tidings_handler_end_to_end_seconds{handler}``: from the event's append to the end of its handling.
- ``tidings_handler_running{handler}``: 1 while the handler consumes; 0 once it stopped (see logs).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["END_TO_END", "ERRORS", "EVENTS", "HANDLE_SECONDS", "LAG", "PARKED", "RUNNING"]

EVENTS = Counter(
    "tidings_handler_events_total", "Events a handler finished with, by outcome", ["handler", "outcome"]
)
ERRORS = Counter("tidings_handler_errors_total", "Failures in a handler's work, by kind", ["handler", "kind"])
PARKED = Gauge("tidings_handler_parked_events", "Events parked for a handler", ["handler"])
LAG = Gauge(
    "tidings_handler_lag_messages",
    "Messages of a partition the handler has not handled",
    ["handler", "topic", "partition"],
)
HANDLE_SECONDS = Histogram(
    "tidings_handler_handle_seconds",
    "Time spent in a handler's handle (or handle_batch)",
    ["handler"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
END_TO_END = Histogram(
    "tidings_handler_end_to_end_seconds",
    "From an event's append to the end of its handling",
    ["handler"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RUNNING = Gauge("tidings_handler_running", "1 while the handler consumes", ["handler"])
