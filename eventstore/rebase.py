"""A store moved to another PostgreSQL cluster: find it out, and re-base its ordering keys.

Events are ordered by the transaction ids of the cluster that wrote them (``events.order_xid``,
``streams.last_xid``, the sequencer's cursor; docs/decisions/0002-global-order.md). A dump/restore or a
logical-replication switchover (a blue/green major upgrade) carries those ids into a cluster whose own ids
are lower: every append to an existing stream is then stamped above the new cluster's horizon and is never
numbered, and a new stream's events sort behind the cursor. Numbering stops for good.

The move shows as a stored id at or above the next id the cluster will hand out, which no transaction of
this cluster can have written: two index look-ups find it (:func:`moved`). The store refuses to number in
that state (:class:`~eventstore.errors.StoreMoved` at start-up, a report while running), and
:func:`rebase` makes the store whole again:

1. Ahead, in batches of their own while appends go on: the ordering keys of numbered events, and the
   streams' last keys, are lowered below the cluster's horizon. A numbered event's key only has to stay
   at or before the cursor, which the old cursor, far above, still is; so this is safe at any time, and
   it is the long part (an UPDATE of every event), done without holding appends back.
2. In one transaction that appends wait for: every event not numbered yet is numbered, those keyed by
   the other cluster first, each in its old (order_xid, id) order, then those keyed by this one; within
   a stream, always in version order (appends made during step 1 carry old, lowered and new keys mixed,
   so the keys alone would not keep it); the few keys still above the horizon are lowered; the cursor
   is set after every event, so that new appends (stamped with this cluster's ids, all at or above the
   horizon) come after everything numbered; the events' id sequence is moved past the highest id if it
   lags (logical replication does not copy sequences).
3. VACUUM takes the old index entries away (until then, every look of the sequencer steps over them).

Nothing already numbered changes its number. ``tidings migrate`` runs it after the migrations, and
``tidings store rebase`` runs it alone (docs/decisions/0014-moving-to-another-cluster.md).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from eventstore.config import StoreConfig
from eventstore.errors import EventStoreError, StoreUnavailable

__all__ = ["Rebase", "moved", "rebase"]

log = logging.getLogger("eventstore.rebase")

# The rebase waits at most this long, in all, for the writers in flight to let go of the tables.
LOCK_WAIT_SECONDS = 60
# Far below PostgreSQL's deadlock_timeout (1 s by default): the rebase gives way first.
SECOND_LOCK_WAIT = "100ms"

# The cursor's id, or the newest event's order_xid, at or above the next transaction id this cluster will
# hand out: written by another cluster. (max() walks the (order_xid, id) index backwards: one look-up.)
_MOVED = """
SELECT q.cursor_xid >= n.next_xid OR coalesce((SELECT max(order_xid) FROM {events}) >= n.next_xid, false)
FROM {sequencer} q CROSS JOIN (SELECT pg_snapshot_xmax(pg_current_snapshot()) AS next_xid) n
WHERE q.singleton
"""

# Every event not numbered yet, in an order that keeps each stream's versions whatever the keys say. The
# keys alone cannot be trusted here: an append after the move to a stream whose last event was numbered
# inherits that event's old key (at or before the cursor), and once step 1 has lowered the stream's last
# key the next append to it is stamped with this cluster's low id, below the inherited one; step 1's
# batches pass over rows and streams that writers hold, so one stream can carry old keys, lowered keys and
# this cluster's ids in any mix. So: rank every waiting event by (stamped by the other cluster first, key,
# id), which puts the events committed before the move in their old order ahead of the appends stamped by
# this cluster; give each event the highest rank of its stream's waiting events up to its version; number
# by (that rank, version). Within a stream the rank never goes down and ties fall to the version; ranks of
# two streams never tie (each is one event's own rank).
_NUMBER_THE_REST = """
WITH state AS (
    SELECT last_event_number FROM {sequencer} WHERE singleton
), ranked AS (
    SELECT e.id, e.stream_id, e.stream_version,
           row_number() OVER (
               ORDER BY e.order_xid < pg_snapshot_xmax(pg_current_snapshot()), e.order_xid, e.id
           ) AS rank
    FROM {events} e
    WHERE NOT EXISTS (SELECT 1 FROM {event_order} o WHERE o.id = e.id)
), kept AS (
    SELECT id, stream_version,
           max(rank) OVER (PARTITION BY stream_id ORDER BY stream_version) AS rank
    FROM ranked
), pending AS (
    SELECT id, row_number() OVER (ORDER BY rank, stream_version) AS rn FROM kept
)
INSERT INTO {event_order} (event_number, id)
SELECT s.last_event_number + p.rn, p.id FROM pending p CROSS JOIN state s
"""

# Just below the oldest transaction still running: every append still to come is stamped at or above it.
_LOW_KEY = "SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::bigint - 1)::text::xid8"

# Ahead of the lock: numbered events (at or before the cursor) above the horizon, a batch at a time in key
# order, from where the last batch ended; returns the batch's last key and size. Rows locked by someone
# else (a stream being appended to, events being deleted) are passed over, never waited for: waiting could
# deadlock with a transaction that appends to several streams, and the locked step lowers what is left.
_LOWER_NUMBERED = """
WITH b AS (
    SELECT id, order_xid FROM {events}
    WHERE (order_xid, id) > (%(after_xid)s, %(after_id)s)
      AND (order_xid, id) <= (%(cursor_xid)s, %(cursor_id)s)
    ORDER BY order_xid, id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), lowered AS (
    UPDATE {events} e SET order_xid = %(low)s FROM b WHERE e.id = b.id
)
SELECT order_xid, id, count(*) OVER () FROM b ORDER BY order_xid DESC, id DESC LIMIT 1
"""
_LOWER_STREAMS_AHEAD = """
WITH b AS (
    SELECT stream_id FROM {streams} WHERE stream_id > %(after)s AND last_xid > %(low)s
    ORDER BY stream_id
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
), lowered AS (
    UPDATE {streams} t SET last_xid = %(low)s FROM b WHERE t.stream_id = b.stream_id AND t.last_xid > %(low)s
)
SELECT max(stream_id), count(*) FROM b
"""
_LOWER_EVENTS = "UPDATE {events} SET order_xid = %(low)s WHERE order_xid > %(low)s"
_LOWER_STREAMS = "UPDATE {streams} SET last_xid = %(low)s WHERE last_xid > %(low)s"
_MOVE_CURSOR = """
UPDATE {sequencer}
SET last_event_number = last_event_number + %(numbered)s, cursor_xid = %(low)s,
    cursor_id = (SELECT coalesce(max(id), 0) FROM {events}), updated_at = now()
WHERE singleton
RETURNING last_event_number
"""
_ID_SEQUENCE = """
SELECT setval(s.seq, s.top)
FROM (SELECT pg_get_serial_sequence(%(events)s, 'id')::regclass AS seq,
             (SELECT max(id) FROM {events}) AS top) s
WHERE s.top > coalesce(pg_sequence_last_value(s.seq), 0)
"""

# Rows lowered per transaction ahead of the lock: a second or two each on a 2-core machine.
BATCH = 50_000
_AFTER_ALL_IDS = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Rebase:
    """What :func:`rebase` did.

    Attributes:
        rebased: False when the store held no id of another cluster (nothing was changed).
        numbered: events numbered by the rebase (those committed but unnumbered at the move, and any
            appended since).
        last_event_number: the last number handed out, after the rebase.
        lowered_events: events whose ordering key was lowered below the cluster's horizon.
        lowered_streams: streams whose last ordering key was lowered.
        seconds: how long the whole rebase took (numbering was stopped all along, since the move).
        held_seconds: how long appends waited for it (the locked part).
    """

    rebased: bool
    numbered: int
    last_event_number: int
    lowered_events: int
    lowered_streams: int
    seconds: float
    held_seconds: float


def _tables(schema: str) -> dict[str, sql.Identifier]:
    return {name: sql.Identifier(schema, name) for name in ("events", "streams", "event_order", "sequencer")}


def moved(conn: psycopg.Connection[Any], schema: str) -> bool:
    """Whether the store in ``schema`` holds transaction ids of another cluster (cheap: two look-ups)."""
    row = conn.execute(sql.SQL(_MOVED).format(**_tables(schema))).fetchone()
    return bool(row and row[0])


def rebase(config: StoreConfig) -> Rebase:
    """Re-base the store's ordering keys on this cluster's transaction ids, if they came from another.

    Safe at any time and from any number of processes at once (they take turns; the later ones find
    nothing to do). Most of the work is done while appends go on; they wait only for the last step, about
    a second per million events (docs/decisions/0014-moving-to-another-cluster.md).

    Example::

        report = rebase(StoreConfig(os.environ["DATABASE_URL"], schema="bank"))
        if report.rebased:
            print(f"{report.numbered} waiting events numbered, up to {report.last_event_number}")

    Raises:
        StoreUnavailable: PostgreSQL could not be reached, or writers held the tables past the lock timeout.
        EventStoreError: any other database error (the step under way is rolled back; run it again).
    """
    started = time.monotonic()
    try:
        with psycopg.connect(config.url) as conn:
            ahead = _lower_ahead(conn, config.schema)
        if ahead is None:
            return Rebase(False, 0, _last_event_number(config), 0, 0, time.monotonic() - started, 0.0)
        _vacuum(config)
        held = time.monotonic()
        outcome = _rebase_under_lock(config)
        held_seconds = time.monotonic() - held
        _vacuum(config)
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"PostgreSQL is unavailable or ended the session: {exc}") from exc
    except psycopg.Error as exc:
        raise EventStoreError(
            f"the rebase of {config.schema!r} failed ({type(exc).__name__}): {exc}. Run "
            f"`tidings store rebase --schema {config.schema}` again: it goes on from where this one stopped"
        ) from exc
    if outcome is None:  # another process finished it meanwhile
        last = _last_event_number(config)
        return Rebase(False, 0, last, ahead[0], ahead[1], time.monotonic() - started, held_seconds)
    numbered, last, lowered_events, lowered_streams = outcome
    report = Rebase(
        True,
        numbered,
        last,
        ahead[0] + lowered_events,
        ahead[1] + lowered_streams,
        time.monotonic() - started,
        held_seconds,
    )
    log.warning(
        "the store holds transaction ids of another cluster: re-based",
        extra={
            "schema": config.schema,
            "numbered": report.numbered,
            "last_event_number": report.last_event_number,
            "lowered_events": report.lowered_events,
            "lowered_streams": report.lowered_streams,
            "seconds": round(report.seconds, 3),
            "held_seconds": round(report.held_seconds, 3),
        },
    )
    return report


def _lower_ahead(conn: psycopg.Connection[Any], schema: str) -> tuple[int, int] | None:
    """Step 1: lower numbered events' and streams' keys in batches; (events, streams) lowered, or None when
    the store holds no id of another cluster."""
    tables = _tables(schema)

    def q(text: str) -> sql.Composed:
        return sql.SQL(text).format(**tables)

    with conn.transaction():
        if not moved(conn, schema):
            return None
        low = conn.execute(_LOW_KEY).fetchone()[0]  # type: ignore[index]
    events = streams = 0
    after: tuple[Any, Any] = (low, _AFTER_ALL_IDS)
    while True:
        with conn.transaction():
            conn.execute("SET LOCAL statement_timeout = 0")
            # The sequencer row keeps two rebases from lowering the same rows at once (sequencing
            # batches skip it, and have nothing to number in a moved store anyway).
            cursor = conn.execute(
                q("SELECT cursor_xid, cursor_id FROM {sequencer} WHERE singleton FOR UPDATE")
            ).fetchone()
            assert cursor is not None, "the sequencer row is missing: run `tidings migrate`"
            params = {"after_xid": after[0], "after_id": after[1], "cursor_xid": cursor[0]}
            params |= {"cursor_id": cursor[1], "low": low, "batch": BATCH}
            row = conn.execute(q(_LOWER_NUMBERED), params).fetchone()
        if row is None:
            break
        after, events = (row[0], row[1]), events + int(row[2])
    after_stream = ""
    while True:
        with conn.transaction():
            conn.execute("SET LOCAL statement_timeout = 0")
            params = {"after": after_stream, "low": low, "batch": BATCH}
            row = conn.execute(q(_LOWER_STREAMS_AHEAD), params).fetchone()
        if row is None or row[0] is None:
            break
        after_stream, streams = row[0], streams + int(row[1])
    return events, streams


def _rebase_under_lock(config: StoreConfig) -> tuple[int, int, int, int] | None:
    """Step 2, tried again while a writer is in the way (see _rebase_once)."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            with psycopg.connect(config.url) as conn:
                return _rebase_once(conn, config.schema)
        except psycopg.errors.LockNotAvailable as exc:
            if time.monotonic() > deadline:
                raise StoreUnavailable(
                    f"the rebase of {config.schema!r} waited {LOCK_WAIT_SECONDS:.0f}s for writers to let go "
                    f"of the store's tables: run `tidings store rebase --schema {config.schema}` again"
                ) from exc
            time.sleep(0.05)


def _rebase_once(conn: psycopg.Connection[Any], schema: str) -> tuple[int, int, int, int] | None:
    """Step 2, in one transaction: (numbered, last_event_number, lowered events, lowered streams), or None
    when the store holds no id of another cluster (any more)."""
    tables = _tables(schema)

    def q(text: str) -> sql.Composed:
        return sql.SQL(text).format(**tables)

    with conn.transaction():
        conn.execute("SET LOCAL statement_timeout = 0")
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{LOCK_WAIT_SECONDS}s")))
        # EXCLUSIVE waits out every writer in flight and holds new ones back; readers go on. Writers take
        # the two tables in either order (a large append moves its stream row, then copies its events; a
        # prepared small append locks events first), so the second lock is only tried for a moment: a
        # writer holding events while it waits for streams would otherwise deadlock with the rebase, and
        # PostgreSQL might pick the writer as the victim. The caller tries again instead.
        conn.execute(q("LOCK TABLE {streams} IN EXCLUSIVE MODE"))
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(SECOND_LOCK_WAIT)))
        conn.execute(q("LOCK TABLE {events} IN EXCLUSIVE MODE"))
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{LOCK_WAIT_SECONDS}s")))
        conn.execute(q("SELECT 1 FROM {sequencer} WHERE singleton FOR UPDATE"))  # waits out a batch
        if not moved(conn, schema):
            return None
        numbered = conn.execute(q(_NUMBER_THE_REST)).rowcount
        low = conn.execute(_LOW_KEY).fetchone()[0]  # type: ignore[index]
        lowered_events = conn.execute(q(_LOWER_EVENTS), {"low": low}).rowcount
        lowered_streams = conn.execute(q(_LOWER_STREAMS), {"low": low}).rowcount
        row = conn.execute(q(_MOVE_CURSOR), {"low": low, "numbered": numbered}).fetchone()
        conn.execute(q(_ID_SEQUENCE), {"events": tables["events"].as_string(conn)})
    return numbered, int(row[0]) if row else 0, lowered_events, lowered_streams


def _vacuum(config: StoreConfig) -> None:
    """Take the lowered rows' old versions and index entries away; appends go on meanwhile."""
    with psycopg.connect(config.url, autocommit=True) as conn:
        conn.execute("SET statement_timeout = 0")
        for table in ("events", "streams"):
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(config.schema, table)))


def _last_event_number(config: StoreConfig) -> int:
    with psycopg.connect(config.url) as conn:
        row = conn.execute(
            sql.SQL("SELECT last_event_number FROM {}").format(sql.Identifier(config.schema, "sequencer"))
        ).fetchone()
    return int(row[0]) if row else 0
