"""A handler in global order against the same handler in per-key order, over the same events.

Every run has a fresh store schema and fresh topics, dropped and deleted afterwards.

- Pre-fill: ``BENCH_GLOBAL_EVENTS`` (default 20,000) JSON events over 1,000 streams, relayed entirely into
  one topic per partition count (1 and 8), before anything is timed. The relay writes the
  ``tidings.previous`` header the merge orders by.
- Each case runs one no-op ``EventHandler`` through ``HandlerRunner`` in this process, in a fresh group,
  and times from ``start()`` until its ``handled`` counter reaches N (consumer construction, the lock or
  the group join, and the first fetch are inside the time):

  - global: ``ordering = "global"`` (the default for concurrency 1): the advisory lock, every partition
    assigned, the merge by event_number, one lane;
  - reference, per key, concurrency 1: the same lane count, in a consumer group, partitions in arrival
    order: what global order costs over it is the merge and the lock;
  - per key, concurrency 8 (8 partitions only): what giving up global order buys in parallelism.

Higher is better: ratio = global / per-key (concurrency 1).
"""

from __future__ import annotations

import os
import time
from typing import Any, cast
from uuid import uuid4

from bench.bench_workers import MAPPER, NoOp, _handled, delete_topics, fill, fresh_schema, relay_into
from bench.results import Row
from eventstore import PostgresEventStore
from tidings import devservices
from workers.app import WorkerApp, WorkerConfig
from workers.handler import EventHandler
from workers.runner import HandlerRunner

NAME = "global_order"
EVENTS = int(os.environ.get("BENCH_GLOBAL_EVENTS", "20000"))
PARTITION_COUNTS = (1, 8)
DEADLINE_SECONDS = 300.0


def timed(
    store: PostgresEventStore, bootstrap: str, app: str, ordering: str, concurrency: int, n: int
) -> float:
    """Events per second for a fresh no-op handler of ``ordering`` over ``<app>.events``."""
    group = f"{app}.{ordering}-{concurrency}-{uuid4().hex[:6]}"
    attributes: dict[str, Any] = {"name": group, "concurrency": concurrency, "ordering": ordering}
    handler = cast(type[EventHandler], type("Timed", (NoOp,), attributes))
    config = WorkerConfig(store, bootstrap)
    runner = HandlerRunner(handler, WorkerApp(app, mapper=MAPPER, handlers=[handler]), config)
    started = time.monotonic()
    runner.start()
    try:
        while _handled(group) < n:
            if runner.status.state in ("failed", "stopped"):
                raise RuntimeError(f"the runner {runner.status.state}: {runner.status.reason}")
            if time.monotonic() - started > DEADLINE_SECONDS:
                raise TimeoutError(f"{group} handled {_handled(group)} of {n} in {DEADLINE_SECONDS:.0f}s")
            time.sleep(0.005)
        return n / (time.monotonic() - started)
    finally:
        runner.stop()
        config.dispose()


def run(repeat: int = 1) -> list[Row]:
    rows: list[Row] = []
    with devservices.services() as running, fresh_schema(running.postgres.address) as config:
        bootstrap = running.kafka.address
        prefix = f"bench-global-{uuid4().hex[:6]}"
        store = PostgresEventStore(config)
        try:
            last = fill(store, EVENTS)
            for partitions in PARTITION_COUNTS:
                app = f"{prefix}-p{partitions}"
                relay_into(store, bootstrap, app, partitions, last)
                results: dict[tuple[str, int], list[float]] = {}
                for _ in range(repeat):
                    cases = [("global", 1), ("per_key", 1)] + ([("per_key", 8)] if partitions > 1 else [])
                    for ordering, concurrency in cases:
                        rate = timed(store, bootstrap, app, ordering, concurrency, last)
                        results.setdefault((ordering, concurrency), []).append(rate)
                reference = max(results[("per_key", 1)])
                params = {"events": last, "partitions": partitions, "repeat": repeat}
                for (ordering, concurrency), rates in results.items():
                    if (ordering, concurrency) == ("per_key", 1):
                        continue
                    best = max(rates)
                    rows.append(
                        Row(
                            NAME,
                            f"{ordering.replace('_', '-')} handler (concurrency {concurrency}), "
                            f"{partitions} partition(s)",
                            "throughput",
                            "events/s",
                            best,
                            "per-key handler, concurrency 1, same events",
                            reference,
                            best / reference,
                            params,
                        )
                    )
        finally:
            store.close()
            delete_topics(bootstrap, prefix)
    return rows
