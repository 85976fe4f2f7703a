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
- ``tidings_commands_received_total{receiver,outcome}``: commands from other applications
  (``workers.command_receiver``), by outcome: executed, duplicate (delivered again, not executed
  again), parked.
- ``tidings_command_receiver_lag_messages{receiver}``: messages of the commands topic's assigned
  partitions not received yet.

A command receiver also counts in ``tidings_handler_errors_total`` and ``tidings_handler_running`` under
its name (``<app>.commands``).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import HistogramMetricFamily

__all__ = [
    "COMMANDS_RECEIVED",
    "END_TO_END",
    "ERRORS",
    "EVENTS",
    "HANDLE_SECONDS",
    "LAG",
    "PARKED",
    "RECEIVER_LAG",
    "RUNNING",
    "STOPPED",
    "LaneHistogram",
    "LaneHistograms",
]

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


class LaneHistograms:
    """Histograms observed once per event by every lane: each lane counts into buckets of its own, with
    no lock, and a scrape adds them up.

    ``prometheus_client.Histogram.observe`` takes a lock and checks its labels on every call: two per
    event were an eighth of a no-op handler's cost. A lane's counts are only ever written by its own
    thread; a scrape that reads them mid-update is off by the one event in flight, never corrupt.
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.buckets = buckets
        self._lanes: list[tuple[str, list[float]]] = []
        self._lock = threading.Lock()
        REGISTRY.register(self)

    def lane(self, handler: str) -> LaneHistogram:
        counts = [0.0] * (len(self.buckets) + 2)  # per bucket, then +Inf, then the sum
        with self._lock:
            self._lanes.append((handler, counts))
        return LaneHistogram(self.buckets, counts)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["handler"])
        totals: dict[str, list[float]] = {}
        with self._lock:
            lanes = list(self._lanes)
        for handler, counts in lanes:
            total = totals.setdefault(handler, [0.0] * len(counts))
            for i, value in enumerate(counts):
                total[i] += value
        for handler, total in sorted(totals.items()):
            cumulative, running = [], 0.0
            for bound, count in zip((*map(str, self.buckets), "+Inf"), total[:-1], strict=True):
                running += count
                cumulative.append((bound, running))
            family.add_metric([handler], cumulative, total[-1])
        yield family

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=["handler"])]


class LaneHistogram:
    """One lane's share of a ``LaneHistograms``."""

    __slots__ = ("_buckets", "_counts")

    def __init__(self, buckets: tuple[float, ...], counts: list[float]) -> None:
        self._buckets = buckets
        self._counts = counts

    def observe(self, value: float) -> None:
        counts = self._counts
        counts[bisect.bisect_left(self._buckets, value)] += 1
        counts[-1] += value


HANDLE_SECONDS = LaneHistograms(
    "tidings_handler_handle_seconds",
    "Time spent in a handler's handle (or handle_batch)",
    (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
END_TO_END = LaneHistograms(
    "tidings_handler_end_to_end_seconds",
    "From an event's append to the end of its handling",
    (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RUNNING = Gauge("tidings_handler_running", "1 while the handler consumes", ["handler"])
STOPPED = Gauge(
    "tidings_handler_stopped",
    "1 while the handler is stopped by its error policy or failed (the process stays up)",
    ["handler"],
)
COMMANDS_RECEIVED = Counter(
    "tidings_commands_received_total", "Commands from other applications, by outcome", ["receiver", "outcome"]
)
RECEIVER_LAG = Gauge(
    "tidings_command_receiver_lag_messages", "Messages of the commands topic not received yet", ["receiver"]
)
