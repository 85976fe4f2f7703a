"""The event store against the PostgreSQL it stands on, and against the ``eventsourcing`` library.

Three sides append the same events (200 bytes of data, a small metadata document) to the same PostgreSQL,
each in a fresh schema that is dropped afterwards, one after the other within each case:

- tidings: ``PostgresEventStore.append_to_stream``; its sequencer thread numbers the events meanwhile.
- raw INSERT: plain INSERTs into a plain table through psycopg 3, one autocommit connection per writer.
  No stream check, no global order: the limit that any store on this PostgreSQL and driver stays under.
- eventsourcing: ``PostgresApplicationRecorder.insert_events``, the recorder that, like tidings, gives the
  events one global order (it takes a table lock per insert to do so).

Each writer thread appends to a stream of its own with the next expected version (eventsourcing: its
own originator id, the next originator versions), as aggregates do. Throughput is measured over
``BENCH_STORE_SECONDS`` (default 4) after half a second of warm-up, once per ``repeat``.
"""

from __future__ import annotations

import getpass
import os
import statistics
import threading
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from inspect import signature
from typing import Any, Self
from uuid import uuid4

import psycopg
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from bench.results import Row
from eventstore import EventData, PostgresEventStore, StoreConfig, migrate
from tidings import devservices

NAME = "store"

SECONDS = float(os.environ.get("BENCH_STORE_SECONDS", "4"))
# Long enough for pools to fill and psycopg to prepare its statements, which the timed part should not see.
WARMUP_SECONDS = 0.5
READ_EVENTS = 200_000
READ_PAGE = 1000
LATENCY_WRITERS = 8
PROBE_POLL_SECONDS = 0.001

EVENT_TYPE = "bench:Deposited"
DATA = b'{"note": "' + b"x" * 188 + b'"}'
METADATA = b'{"user": "bench"}'
assert len(DATA) == 200


class Side(ABC):
    """One system under measurement, set up in schemas of its own that ``close`` drops again."""

    name: str

    def __init__(self, url: str, batch: int, writers: int) -> None:
        self.url, self.batch = url, batch

    @abstractmethod
    def writer(self) -> AbstractContextManager[Callable[[], None]]:
        """One writer thread's ``append()``, which appends ``batch`` events to the thread's stream."""

    def settle(self) -> None:  # noqa: B027  # a hook: only tidings has something to do
        """Make everything appended so far readable in the global order."""

    @abstractmethod
    def read_all(self, events: int) -> int:
        """Read the first ``events`` events of the global order, a page at a time; return how many."""

    @abstractmethod
    def close(self) -> None:
        """Release connections and drop the side's schema."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _fresh_schema(prefix: str) -> str:
    # Unique, so that a shared DATABASE_URL can hold several runs at once.
    return f"bench_{prefix}_{uuid4().hex[:8]}"


def _drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


class Tidings(Side):
    name = "tidings"

    def __init__(self, url: str, batch: int, writers: int) -> None:
        super().__init__(url, batch, writers)
        # One connection per writer, one for the sequencer, one for a probe or a backlog query.
        self.config = StoreConfig(url, _fresh_schema("tidings"), pool_size=writers + 2)
        migrate(self.config)
        self.store = PostgresEventStore(self.config)

    @contextmanager
    def writer(self) -> Iterator[Callable[[], None]]:
        stream_id, version = f"bench-{uuid4()}", 0

        def append() -> None:
            nonlocal version
            # New EventData each time: each event carries a fresh event_id, part of the store's API.
            events = [EventData(EVENT_TYPE, DATA, METADATA) for _ in range(self.batch)]
            version = self.store.append_to_stream(stream_id, version, events)

        yield append

    def settle(self) -> None:
        self.store.sequencer.catch_up()

    def read_all(self, events: int) -> int:
        read, start = 0, 1
        while read < events:
            page = self.store.read_all_forward(start, READ_PAGE)
            if not page:
                break
            read += len(page)
            start = page[-1].event_number + 1  # type: ignore[operator]  # numbered: read from $all
        return read

    def unnumbered(self) -> int:
        """Committed events the sequencer has not numbered yet."""
        with psycopg.connect(self.url) as conn:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(self.config.schema, "events"))
            ).fetchone()
        return (row[0] if row else 0) - self.store.last_event_number()

    def close(self) -> None:
        self.store.close()
        _drop_schema(self.url, self.config.schema)


class RawInsert(Side):
    name = "raw INSERT"

    def __init__(self, url: str, batch: int, writers: int) -> None:
        super().__init__(url, batch, writers)
        self.schema = _fresh_schema("raw")
        self.table = sql.Identifier(self.schema, "events")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (id bigserial PRIMARY KEY, stream_id text NOT NULL, "
                    "version bigint NOT NULL, type text NOT NULL, data bytea NOT NULL, "
                    "metadata bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
                ).format(self.table)
            )
        self.insert_one = sql.SQL(
            "INSERT INTO {} (stream_id, version, type, data, metadata) VALUES (%s, %s, %s, %s, %s)"
        ).format(self.table)
        # A batch is one multi-row statement, so one round trip and one transaction under autocommit.
        self.insert_many = sql.SQL(
            "INSERT INTO {} (stream_id, version, type, data, metadata) "
            "SELECT %s, v, %s, d, m FROM unnest(%s::bigint[], %s::bytea[], %s::bytea[]) AS u(v, d, m)"
        ).format(self.table)
        self.select_page = sql.SQL(
            "SELECT id, stream_id, version, type, data, metadata, created_at FROM {} "
            "WHERE id > %s ORDER BY id LIMIT %s"
        ).format(self.table)

    @contextmanager
    def writer(self) -> Iterator[Callable[[], None]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            stream_id, version = f"bench-{uuid4()}", 0

            def append() -> None:
                nonlocal version
                if self.batch == 1:
                    conn.execute(self.insert_one, (stream_id, version + 1, EVENT_TYPE, DATA, METADATA))
                else:
                    versions = list(range(version + 1, version + self.batch + 1))
                    conn.execute(
                        self.insert_many,
                        (stream_id, EVENT_TYPE, versions, [DATA] * self.batch, [METADATA] * self.batch),
                    )
                version += self.batch

            yield append

    def read_all(self, events: int) -> int:
        read, after = 0, 0
        with psycopg.connect(self.url, autocommit=True) as conn:
            while read < events:
                page = conn.execute(self.select_page, (after, READ_PAGE)).fetchall()
                if not page:
                    break
                read += len(page)
                after = page[-1][0]
        return read

    def close(self) -> None:
        _drop_schema(self.url, self.schema)


class Eventsourcing(Side):
    name = "eventsourcing"

    def __init__(self, url: str, batch: int, writers: int) -> None:
        super().__init__(url, batch, writers)
        self.schema = _fresh_schema("es")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
        # The datastore takes the connection's parts, not a URL.
        params = conninfo_to_dict(url)
        self.datastore = PostgresDatastore(
            str(params["dbname"]),
            str(params.get("host", "")),
            str(params.get("port", "5432")),
            str(params.get("user") or getpass.getuser()),
            str(params.get("password", "")),
            pool_size=writers,
            schema=self.schema,
        )
        self.recorder = PostgresApplicationRecorder(self.datastore)
        self.recorder.create_table()

    @contextmanager
    def writer(self) -> Iterator[Callable[[], None]]:
        originator_id, version = uuid4(), 0

        def append() -> None:
            nonlocal version
            # eventsourcing has no metadata column: its state carries both, so the bytes written match.
            self.recorder.insert_events(
                [
                    StoredEvent(originator_id, version + i, EVENT_TYPE, DATA + METADATA)
                    for i in range(1, self.batch + 1)
                ]
            )
            version += self.batch

        yield append

    def read_all(self, events: int) -> int:
        read, start = 0, 1
        while read < events:
            page = self.recorder.select_notifications(start, READ_PAGE)
            if not page:
                break
            read += len(page)
            start = page[-1].id + 1
        return read

    def close(self) -> None:
        self.datastore.close()
        _drop_schema(self.url, self.schema)


SIDES: tuple[type[Side], ...] = (Tidings, RawInsert, Eventsourcing)


@contextmanager
def writing(side: Side, writers: int) -> Iterator[list[int]]:
    """``writers`` threads appending through ``side`` until the block ends; yields their append counts."""
    counts = [0] * writers
    stop = threading.Event()

    def work(index: int) -> None:
        with side.writer() as append:
            while not stop.is_set():
                append()
                counts[index] += 1

    with ThreadPoolExecutor(writers) as pool:
        futures = [pool.submit(work, index) for index in range(writers)]
        try:
            yield counts
        finally:
            stop.set()
            for future in futures:
                future.result()  # a writer's exception fails the run rather than lowering its number


def events_per_second(side: Side, writers: int, seconds: float) -> float:
    with writing(side, writers) as counts:
        time.sleep(WARMUP_SECONDS)
        before, started = sum(counts), time.perf_counter()
        time.sleep(seconds)
        appends, elapsed = sum(counts) - before, time.perf_counter() - started
    return appends * side.batch / elapsed


def _against_both(
    case: str, runs: dict[str, list[float]], limit_name: str, library_name: str, params: dict[str, Any]
) -> list[Row]:
    """Two rows for one throughput case: tidings' median against the limit's, and against eventsourcing's."""
    ours = statistics.median(runs[Tidings.name])
    limit = statistics.median(runs[RawInsert.name])
    library = statistics.median(runs[Eventsourcing.name])
    metric, unit = "throughput", "events/s"
    return [
        Row(NAME, case, f"{metric}, share of limit", unit, ours, limit_name, limit, ours / limit, params),
        Row(NAME, case, metric, unit, ours, library_name, library, ours / library, params),
    ]


def append_cases(url: str, repeat: int, seconds: float) -> list[Row]:
    rows: list[Row] = []
    for case, batch, writers in (
        ("single-event appends, 1 writer", 1, 1),
        ("single-event appends, 8 writers", 1, 8),
        ("single-event appends, 32 writers", 1, 32),
        ("100-event batch appends, 8 writers", 100, 8),
    ):
        runs: dict[str, list[float]] = defaultdict(list)
        # What the sequencer still had to number when the writers stopped, and how long that took.
        backlogs: list[dict[str, float]] = []
        for _ in range(repeat):
            for side_class in SIDES:
                with side_class(url, batch, writers) as side:
                    runs[side.name].append(events_per_second(side, writers, seconds))
                    if isinstance(side, Tidings):
                        unnumbered, started = side.unnumbered(), time.perf_counter()
                        side.settle()
                        backlogs.append(
                            {"unnumbered": unnumbered, "catch_up_s": round(time.perf_counter() - started, 3)}
                        )
        params = {
            "writers": writers,
            "events_per_append": batch,
            "seconds": seconds,
            "repeat": repeat,
            "runs": dict(runs),
            "tidings_backlog_at_stop": backlogs,
        }
        limit = "raw INSERT (the limit)" if batch == 1 else "raw 100-row INSERT (the limit)"
        rows += _against_both(case, runs, limit, "eventsourcing PostgresApplicationRecorder", params)
    return rows


def fill(side: Side, events: int) -> None:
    """Append at least ``events`` events with 8 writers, untimed, and make them all readable."""
    with writing(side, 8) as counts:
        while sum(counts) * side.batch < events:
            time.sleep(0.01)
    side.settle()


def read_case(url: str, repeat: int) -> list[Row]:
    runs: dict[str, list[float]] = defaultdict(list)
    for _ in range(repeat):
        for side_class in SIDES:
            with side_class(url, batch=100, writers=8) as side:
                fill(side, READ_EVENTS)
                started = time.perf_counter()
                read = side.read_all(READ_EVENTS)
                runs[side.name].append(read / (time.perf_counter() - started))
                assert read == READ_EVENTS, f"{side.name} read {read} of {READ_EVENTS} events"
    params = {"events": READ_EVENTS, "page": READ_PAGE, "repeat": repeat, "runs": dict(runs)}
    return _against_both(
        "read_all throughput",
        runs,
        "raw SELECT keyset on id (the limit)",
        "eventsourcing select_notifications",
        params,
    )


def numbering_latencies(url: str, seconds: float) -> list[float]:
    """Milliseconds from a probe's append returning until its event has an event_number, under load."""
    samples = []
    # The pool has room for the probe beside the writers and the sequencer.
    with Tidings(url, 1, LATENCY_WRITERS + 1) as side, writing(side, LATENCY_WRITERS):
        store = side.store
        time.sleep(WARMUP_SECONDS)
        stream_id, version = f"probe-{uuid4()}", 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            version = store.append_to_stream(stream_id, version, [EventData(EVENT_TYPE, DATA, METADATA)])
            appended = time.perf_counter()
            # A stream read shows the event at once, and its event_number as soon as it has one.
            while store.read_stream_backward(stream_id, version, 1)[0].event_number is None:
                time.sleep(PROBE_POLL_SECONDS)
            samples.append((time.perf_counter() - appended) * 1000)
    return samples


def latency_case(url: str, repeat: int, seconds: float) -> list[Row]:
    samples = [sample for _ in range(repeat) for sample in numbering_latencies(url, seconds)]
    percentiles = statistics.quantiles(samples, n=100)
    # The store's default poll interval: what a sequencer that is never woken would make a writer wait.
    poll_ms = 1000 * signature(PostgresEventStore).parameters["sequencer_poll_interval"].default
    params = {
        "writers": LATENCY_WRITERS,
        "seconds": seconds,
        "repeat": repeat,
        "samples": len(samples),
        "probe_poll_ms": PROBE_POLL_SECONDS * 1000,
        "how": "a probe thread appends one event, then reads it back every 1 ms until it has an "
        "event_number, while 8 writers append single events continuously; a raw INSERT is visible on "
        "commit (latency ~0), so the reference is the sequencer's poll interval and ratio = "
        "poll interval / latency (above 1: numbered sooner than one poll interval)",
    }
    return [
        Row(
            NAME,
            "append -> numbered latency, 8 writers",
            metric,
            "ms",
            value,
            "sequencer poll interval",
            poll_ms,
            poll_ms / value,
            params,
        )
        for metric, value in (("p50 ms", statistics.median(samples)), ("p99 ms", percentiles[98]))
    ]


def run(repeat: int = 1) -> list[Row]:
    with devservices.postgres() as postgres:
        url = postgres.address
        return [
            *append_cases(url, repeat, SECONDS),
            *read_case(url, repeat),
            *latency_case(url, repeat, SECONDS),
        ]
