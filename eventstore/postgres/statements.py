"""The store's SQL, composed once per schema with ``psycopg.sql`` (identifiers quoted, values bound).

Each statement is one round trip. Appends are a single statement (stream version check and event
insert in one data-modifying CTE), so an append on the store's own connection needs no explicit
transaction: the statement is the transaction.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from psycopg import sql

__all__ = ["Statements", "notification_channel"]

# Columns in RecordedEvent's field order. Stream reads see events before they are numbered (LEFT JOIN);
# reads of the global order see numbered events only.
_READ_STREAM = """SELECT e.event_id, o.event_number, e.stream_id, e.stream_version, e.event_type, e.data,
       e.metadata, e.schema_id, e.causation_id, e.correlation_id, e.created_at
FROM {events} e LEFT JOIN {event_order} o ON o.id = e.id"""
_READ_ALL = """SELECT e.event_id, o.event_number, e.stream_id, e.stream_version, e.event_type, e.data,
       e.metadata, e.schema_id, e.causation_id, e.correlation_id, e.created_at
FROM {event_order} o JOIN {events} e ON e.id = o.id"""

# What the relay sends, with the header values as PostgreSQL's text (ids, versions, and created_at in
# ISO 8601 in UTC), which costs less there than UUIDs and datetimes made and formatted again in Python.
# A batch ends at ``count`` events or with the event that brings its data and metadata to ``max_bytes``
# (a larger event goes alone), so that a run of large events cannot take the relay's memory.
_RELAY_BATCH = """SELECT event_number, stream_id, event_type, data, metadata, event_id, stream_version,
       created_at, schema_id, causation_id, correlation_id
FROM (SELECT o.event_number, e.stream_id, e.event_type, e.data, e.metadata, e.event_id::text,
             e.stream_version::text AS stream_version,
             to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"') AS created_at,
             e.schema_id, e.causation_id::text AS causation_id, e.correlation_id::text AS correlation_id,
             octet_length(e.data) + octet_length(e.metadata) AS size,
             sum(octet_length(e.data) + octet_length(e.metadata)) OVER (ORDER BY o.event_number) AS running
      FROM {event_order} o JOIN {events} e ON e.id = o.id
      WHERE o.event_number >= %(start)s ORDER BY o.event_number LIMIT %(count)s) batch
WHERE running - size < %(max_bytes)s
ORDER BY event_number"""

# The events to insert arrive as parallel arrays, unnested WITH ORDINALITY so that the n-th event
# gets the n-th new stream version.
_INSERT_EVENTS = """
INSERT INTO {events} (order_xid, event_id, stream_id, stream_version, event_type, schema_id, data, metadata,
                      causation_id, correlation_id)
SELECT s.last_xid, u.event_id, %(stream_id)s, s.stream_version - %(count)s + u.ord, u.event_type, u.schema_id,
       u.data, u.metadata, u.causation_id, u.correlation_id
FROM s, unnest(%(event_ids)s::uuid[], %(event_types)s::text[], %(schema_ids)s::text[], %(datas)s::bytea[],
               %(metadatas)s::bytea[], %(causation_ids)s::uuid[], %(correlation_ids)s::uuid[])
     WITH ORDINALITY AS u(event_id, event_type, schema_id, data, metadata, causation_id, correlation_id, ord)
RETURNING stream_version
"""

# The common case, one event, without the arrays: cheaper to send and to plan.
_INSERT_EVENT = """
INSERT INTO {events} (order_xid, event_id, stream_id, stream_version, event_type, schema_id, data, metadata,
                      causation_id, correlation_id)
SELECT s.last_xid, %(event_id)s::uuid, %(stream_id)s, s.stream_version, %(event_type)s::text,
       %(schema_id)s::text, %(data)s::bytea, %(metadata)s::bytea, %(causation_id)s::uuid,
       %(correlation_id)s::uuid
FROM s
RETURNING stream_version
"""

# How the stream row moves for each kind of expectation; each returns the new version and the order_xid
# of the new events, or no row when the expectation does not hold (the store then reads the stream to
# say why). The order_xid is the writer's transaction id raised to the stream's previous one: a
# transaction that got its id early but appends after a younger one still sorts after it.
_STREAM_UPDATE = {
    "exact": """
        UPDATE {streams} t
        SET stream_version = t.stream_version + %(count)s,
            last_xid = greatest(t.last_xid, pg_current_xact_id())
        WHERE stream_id = %(stream_id)s AND t.stream_version = %(expected)s AND t.deleted_at IS NULL
        RETURNING t.stream_version, {order_xid}""",
    "create": """
        INSERT INTO {streams} AS t (stream_id, stream_version) VALUES (%(stream_id)s, %(count)s)
        ON CONFLICT (stream_id) DO NOTHING
        RETURNING t.stream_version, {order_xid}""",
    "any": """
        INSERT INTO {streams} AS t (stream_id, stream_version) VALUES (%(stream_id)s, %(count)s)
        ON CONFLICT (stream_id) DO UPDATE
        SET stream_version = t.stream_version + %(count)s,
            last_xid = greatest(t.last_xid, pg_current_xact_id())
        WHERE t.deleted_at IS NULL
        RETURNING t.stream_version, {order_xid}""",
    "exists": """
        UPDATE {streams} t
        SET stream_version = t.stream_version + %(count)s,
            last_xid = greatest(t.last_xid, pg_current_xact_id())
        WHERE stream_id = %(stream_id)s AND t.deleted_at IS NULL
        RETURNING t.stream_version, {order_xid}""",
}

# One batch of sequencing, as one statement: take the cursor (skip if another sequencer holds it),
# number the committed events after it that lie below the oldest running transaction, move the cursor,
# and tell listeners (a hint, delivered only if the batch commits; one per batch, never per append).
_SEQUENCE = """
WITH state AS (
    SELECT last_event_number, cursor_xid, cursor_id FROM {sequencer} WHERE singleton FOR UPDATE SKIP LOCKED
), batch AS (
    -- LATERAL makes the cursor an index condition: the scan starts at the cursor instead of reading
    -- every event already numbered.
    SELECT b.id, b.order_xid, row_number() OVER (ORDER BY b.order_xid, b.id) AS rn
    FROM state CROSS JOIN LATERAL (
        SELECT e.id, e.order_xid FROM {events} e
        WHERE (e.order_xid, e.id) > (state.cursor_xid, state.cursor_id)
          AND e.order_xid < pg_snapshot_xmin(pg_current_snapshot())
        ORDER BY e.order_xid, e.id
        LIMIT %(batch_size)s
    ) b
), numbered AS (
    INSERT INTO {event_order} (event_number, id)
    SELECT state.last_event_number + batch.rn, batch.id FROM batch, state
), last AS (
    SELECT id, order_xid, rn FROM batch ORDER BY rn DESC LIMIT 1
)
UPDATE {sequencer} q
SET last_event_number = q.last_event_number + last.rn, cursor_xid = last.order_xid, cursor_id = last.id,
    updated_at = now()
FROM last
WHERE q.singleton
RETURNING q.last_event_number, last.rn, pg_notify(%(channel)s, q.last_event_number::text)
"""

# What waits for a number: all committed events after the cursor, and those of them held back by the
# horizon (a transaction still running); the oldest held-back event's age; the last number handed out;
# and whether the cursor or the newest event carries an id this cluster has not handed out yet (the store
# was moved from another cluster: eventstore/rebase.py).
_WAITING = """
SELECT count(e.id),
       count(e.id) FILTER (WHERE e.order_xid >= h.xmin),
       extract(epoch FROM now() - min(e.created_at) FILTER (WHERE e.order_xid >= h.xmin)),
       extract(epoch FROM now() - min(e.created_at)),
       q.last_event_number,
       q.cursor_xid >= h.xmax OR coalesce((SELECT max(order_xid) FROM {events}) >= h.xmax, false)
FROM {sequencer} q
CROSS JOIN (SELECT pg_snapshot_xmin(s) AS xmin, pg_snapshot_xmax(s) AS xmax FROM pg_current_snapshot() s) h
LEFT JOIN LATERAL (
    SELECT id, order_xid, created_at FROM {events} e
    WHERE (e.order_xid, e.id) > (q.cursor_xid, q.cursor_id)
) e ON true
GROUP BY q.last_event_number, q.cursor_xid, h.xmax
"""

_RECORD_SNAPSHOT = """
INSERT INTO {snapshots} (source_type, source_id, source_version, snapshot_version, schema_id, data, metadata)
VALUES (%(source_type)s, %(source_id)s, %(source_version)s, %(snapshot_version)s, %(schema_id)s, %(data)s,
        %(metadata)s)
ON CONFLICT (source_type, source_id) DO UPDATE
SET source_version = EXCLUDED.source_version, snapshot_version = EXCLUDED.snapshot_version,
    schema_id = EXCLUDED.schema_id, data = EXCLUDED.data, metadata = EXCLUDED.metadata, created_at = now()
"""


def notification_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which the sequencer announces newly numbered events."""
    channel = f"tidings_numbered_{schema}"
    return channel if len(channel) <= 63 else f"tidings_numbered_{zlib.crc32(schema.encode()):08x}"


@dataclass(frozen=True)
class Statements:
    """Every statement of one store schema."""

    insert_events: dict[str, bytes]
    insert_event: dict[str, bytes]
    move_stream: dict[str, bytes]
    copy_events: bytes
    sequence: bytes
    waiting: bytes
    stream_state: bytes
    lock_stream: bytes
    last_event_number: bytes
    read_stream_forward: bytes
    read_stream_backward: bytes
    read_all_forward: bytes
    relay_batch: bytes
    read_all_backward: bytes
    stream_info: bytes
    list_streams: bytes
    soft_delete: bytes
    hard_delete_events: bytes
    hard_delete_stream: bytes
    record_snapshot: bytes
    read_snapshot: bytes
    delete_snapshot: bytes

    @classmethod
    def for_schema(cls, schema: str) -> Statements:
        tables = {
            name: sql.Identifier(schema, name)
            for name in ("streams", "events", "event_order", "sequencer", "snapshots")
        }

        def q(text: str, order_xid: str = "t.last_xid") -> bytes:
            # Rendered once: composing on every execution costs more than the statement's parameters.
            return sql.SQL(text).format(order_xid=sql.SQL(order_xid), **tables).as_string(None).encode()

        read = _READ_STREAM
        read_all = _READ_ALL
        return cls(
            insert_events={
                kind: q(f"WITH s AS ({update}) {_INSERT_EVENTS}") for kind, update in _STREAM_UPDATE.items()
            },
            insert_event={
                kind: q(f"WITH s AS ({update}) {_INSERT_EVENT}") for kind, update in _STREAM_UPDATE.items()
            },
            # COPY cannot join a CTE: large appends move the stream row first, then copy the events.
            # The order_xid as bigint: binary COPY sends it as int8, whose wire format xid8 shares.
            move_stream={
                kind: q(update, "t.last_xid::text::bigint") for kind, update in _STREAM_UPDATE.items()
            },
            copy_events=q(
                "COPY {events} (order_xid, event_id, stream_id, stream_version, event_type, schema_id, data, "
                "metadata, causation_id, correlation_id) FROM STDIN (FORMAT BINARY)"
            ),
            sequence=q(_SEQUENCE),
            waiting=q(_WAITING),
            stream_state=q(
                "SELECT stream_version, deleted_at IS NOT NULL FROM {streams} WHERE stream_id = %s"
            ),
            lock_stream=q(
                "SELECT stream_version, deleted_at IS NOT NULL FROM {streams} WHERE stream_id = %s FOR UPDATE"
            ),
            last_event_number=q("SELECT last_event_number FROM {sequencer}"),
            read_stream_forward=q(
                read + " WHERE e.stream_id = %(stream_id)s AND e.stream_version >= %(start)s "
                "ORDER BY e.stream_version LIMIT %(count)s"
            ),
            read_stream_backward=q(
                read + " WHERE e.stream_id = %(stream_id)s AND e.stream_version <= %(start)s "
                "ORDER BY e.stream_version DESC LIMIT %(count)s"
            ),
            read_all_forward=q(
                read_all + " WHERE o.event_number >= %(start)s ORDER BY o.event_number LIMIT %(count)s"
            ),
            relay_batch=q(_RELAY_BATCH),
            read_all_backward=q(
                read_all + " WHERE o.event_number <= %(start)s ORDER BY o.event_number DESC LIMIT %(count)s"
            ),
            stream_info=q(
                "SELECT stream_id, stream_version, created_at, deleted_at IS NOT NULL FROM {streams} "
                "WHERE stream_id = %s"
            ),
            list_streams=q(
                "SELECT stream_id, stream_version, created_at, deleted_at IS NOT NULL FROM {streams} "
                "WHERE stream_id > %(after)s ORDER BY stream_id LIMIT %(limit)s"
            ),
            soft_delete=q(
                "UPDATE {streams} SET deleted_at = now() WHERE stream_id = %s AND deleted_at IS NULL "
                "RETURNING stream_version"
            ),
            hard_delete_events=q("DELETE FROM {events} WHERE stream_id = %s"),
            hard_delete_stream=q("DELETE FROM {streams} WHERE stream_id = %s"),
            record_snapshot=q(_RECORD_SNAPSHOT),
            read_snapshot=q(
                "SELECT source_type, source_id, source_version, data, snapshot_version, metadata, "
                "schema_id, created_at FROM {snapshots} "
                "WHERE source_type = %s AND source_id = %s AND snapshot_version = %s"
            ),
            delete_snapshot=q("DELETE FROM {snapshots} WHERE source_type = %s AND source_id = %s"),
        )
