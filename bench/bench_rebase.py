"""Re-basing a store moved to another cluster: how long appends wait, against a rewrite in one transaction.

A store of ``BENCH_REBASE_EVENTS`` events (default 500,000; 200 bytes of data, one stream per ten events),
all but 1,000 numbered, every ordering key far above the cluster's own transaction ids, as a dump/restore
into a younger cluster leaves it (docs/decisions/0014-moving-to-another-cluster.md); analysed, as a settled
restore would be. A writer appends one event at a time to the store's streams throughout.

- tidings: ``eventstore.rebase``: keys lowered in batches while appends go on, then a short locked step.
- reference: the same statements in one transaction under the same locks (the simplest correct rebase:
  appends wait for the whole rewrite).

Metrics: the longest append the writer saw during the rebase, and the rebase's whole duration (numbering
is stopped all along, so the whole duration matters too). Each side builds its own store, interleaved.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from bench.results import Row
from eventstore import ANY, EventData, PostgresEventStore, StoreConfig, migrate, rebase
from eventstore.rebase import _LOW_KEY, _LOWER_EVENTS, _LOWER_STREAMS, _MOVE_CURSOR, _NUMBER_THE_REST
from tidings import devservices

NAME = "rebase"

EVENTS = int(os.environ.get("BENCH_REBASE_EVENTS", "500000"))
WAITING = 1000
OLD_CLUSTER = 10**12
APPEND_EVERY_SECONDS = 0.01


@contextmanager
def moved_store(url: str, events: int) -> Iterator[StoreConfig]:
    """A migrated store whose keys all come from an older, busier cluster; dropped afterwards."""
    config = StoreConfig(url, f"bench_rebase_{uuid.uuid4().hex[:8]}")
    migrate(config)
    t = {
        name: sql.Identifier(config.schema, name)
        for name in ("events", "streams", "event_order", "sequencer")
    }
    streams = max(1, events // 10)
    numbered = events - WAITING
    try:
        with psycopg.connect(url) as conn:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {events} (order_xid, event_id, stream_id, stream_version, event_type, "
                    "schema_id, data, metadata) "
                    "SELECT (%(old)s + g)::text::xid8, gen_random_uuid(), 's-' || (g %% %(streams)s), "
                    "g / %(streams)s + 1, 'bench:Deposited', '', convert_to(repeat(md5(g::text), 6), 'UTF8') "
                    "|| '\\x0000000000000000'::bytea, '{{}}'::bytea FROM generate_series(1, %(n)s) g"
                ).format(**t),
                {"old": OLD_CLUSTER, "n": events, "streams": streams},
            )
            conn.execute(
                sql.SQL(
                    "INSERT INTO {streams} (stream_id, stream_version, last_xid) "
                    "SELECT stream_id, max(stream_version), max(order_xid::text::bigint)::text::xid8 "
                    "FROM {events} GROUP BY stream_id"
                ).format(**t)
            )
            conn.execute(
                sql.SQL(
                    "INSERT INTO {event_order} (event_number, id) "
                    "SELECT row_number() OVER (ORDER BY order_xid, id), id FROM {events} "
                    "ORDER BY order_xid, id LIMIT %(k)s"
                ).format(**t),
                {"k": numbered},
            )
            conn.execute(
                sql.SQL(
                    "UPDATE {sequencer} SET last_event_number = %(k)s, "
                    "cursor_xid = (%(old)s + %(k)s)::text::xid8, cursor_id = %(k)s"
                ).format(**t),
                {"k": numbered, "old": OLD_CLUSTER},
            )
        with psycopg.connect(url, autocommit=True) as conn:
            for name in ("events", "streams", "event_order"):
                conn.execute(sql.SQL("VACUUM ANALYZE {}").format(t[name]))
        yield config
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(config.schema)))


def rebase_in_one_transaction(config: StoreConfig) -> None:
    """The reference: every step of the rebase under the locks, in one transaction."""
    t = {
        name: sql.Identifier(config.schema, name)
        for name in ("events", "streams", "event_order", "sequencer")
    }

    def q(text: str) -> sql.Composed:
        return sql.SQL(text).format(**t)

    with psycopg.connect(config.url) as conn, conn.transaction():
        conn.execute("SET LOCAL statement_timeout = 0")
        conn.execute(q("LOCK TABLE {streams} IN EXCLUSIVE MODE"))
        conn.execute(q("LOCK TABLE {events} IN EXCLUSIVE MODE"))
        conn.execute(q("SELECT 1 FROM {sequencer} WHERE singleton FOR UPDATE"))
        numbered = conn.execute(q(_NUMBER_THE_REST)).rowcount
        low = conn.execute(_LOW_KEY).fetchone()[0]  # type: ignore[index]
        conn.execute(q(_LOWER_EVENTS), {"low": low})
        conn.execute(q(_LOWER_STREAMS), {"low": low})
        conn.execute(q(_MOVE_CURSOR), {"low": low, "numbered": numbered})
    with psycopg.connect(config.url, autocommit=True) as conn:
        conn.execute("SET statement_timeout = 0")
        conn.execute(q("VACUUM (ANALYZE) {events}"))


def measure(url: str, side: Callable[[StoreConfig], object]) -> tuple[float, float]:
    """(the longest append during the rebase, the rebase's duration), in seconds."""
    with moved_store(url, EVENTS) as config:
        store = PostgresEventStore(config, sequencer=False)
        stop = threading.Event()
        longest = [0.0]

        def write() -> None:
            n = 0
            while not stop.is_set():
                started = time.monotonic()
                store.append_to_stream(f"s-{n % 100}", ANY, [EventData("bench:Deposited", b"x" * 200)])
                longest[0] = max(longest[0], time.monotonic() - started)
                n += 1
                stop.wait(APPEND_EVERY_SECONDS)

        writer = threading.Thread(target=write)
        writer.start()
        try:
            time.sleep(0.5)
            longest[0] = 0.0
            started = time.monotonic()
            side(config)
            duration = time.monotonic() - started
        finally:
            stop.set()
            writer.join()
            store.close()
        with PostgresEventStore(config) as check:
            check.sequencer.catch_up()  # numbering goes on after either side
    return longest[0], duration


def run(repeat: int = 1) -> list[Row]:
    with devservices.postgres() as postgres:
        held: dict[str, list[float]] = {"tidings": [], "reference": []}
        total: dict[str, list[float]] = {"tidings": [], "reference": []}
        for _ in range(repeat):
            for name, side in (("tidings", rebase), ("reference", rebase_in_one_transaction)):
                longest, duration = measure(postgres.address, side)
                held[name].append(longest)
                total[name].append(duration)
    params = {"events": EVENTS, "waiting": WAITING, "streams": max(1, EVENTS // 10), "repeat": repeat}
    reference_name = "one transaction under the locks"
    ours, theirs = statistics.median(held["tidings"]), statistics.median(held["reference"])
    ours_total, theirs_total = statistics.median(total["tidings"]), statistics.median(total["reference"])
    return [
        Row(
            NAME,
            f"{EVENTS} events",
            "longest append",
            "s",
            ours,
            reference_name,
            theirs,
            theirs / ours,
            params,
        ),
        Row(
            NAME,
            f"{EVENTS} events",
            "rebase duration",
            "s",
            ours_total,
            reference_name,
            theirs_total,
            theirs_total / ours_total,
            params,
        ),
    ]
