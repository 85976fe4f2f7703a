"""Strong-consistency acknowledgements per event, and parked events keyed by the message.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

- ``handler_acks.versions`` (an ``int8multirange``) replaces ``stream_version``: the stream versions a
  handler has finished with, each one acknowledged by itself. The highest version used to stand for every
  earlier one, which held only while a handler took a stream's events in stream order; a routing that
  spreads a stream over partitions or topics breaks that, and a dispatch returned before its first event
  was handled (issue 20, case 8). Existing rows keep what they claimed: every version up to theirs.
- ``strong_handlers.carries``: which events reach the handler's topics (JSON, see
  ``eventstore.acknowledgements.Carried``; NULL: every event). A strong dispatch waits only for the
  handlers that will see one of its events.
- ``parked_events.message_digest``: the SHA-256 of the message (key, value, headers). Rows are unique per
  (handler, topic, partition, offset, digest), not per offset alone: after a topic is deleted and made
  again, offsets start over, and a new message at an old offset was silently not parked (issue 20, 9b).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from psycopg import sql
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# The digest ``workers.parking.message_digest`` computes, in SQL, for the rows parked before it existed.
_DIGEST = (
    "sha256(int4send(length(key)) || key || int4send(length(value)) || value || coalesce(("
    "SELECT string_agg(int4send(octet_length(convert_to(n, 'UTF8'))) || convert_to(n, 'UTF8') || "
    "int4send(length(coalesce(v, ''::bytea))) || coalesce(v, ''::bytea), ''::bytea ORDER BY i) "
    "FROM unnest(header_names, header_values) WITH ORDINALITY AS h(n, v, i)), ''::bytea))"
)


def _execute(statement: str, schema: str, table: str) -> None:
    """``statement`` with ``{t}`` standing for ``schema.table``, quoted as an identifier."""
    op.execute(sql.SQL(statement).format(t=sql.Identifier(schema, table)).as_string(None))


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.add_column(
        "handler_acks",
        sa.Column("versions", postgresql.INT8MULTIRANGE, nullable=False, server_default="{}"),
        schema=schema,
    )
    _execute(
        "UPDATE {t} SET versions = int8multirange(int8range(1, stream_version + 1))", schema, "handler_acks"
    )
    op.drop_column("handler_acks", "stream_version", schema=schema)
    op.add_column("strong_handlers", sa.Column("carries", postgresql.JSONB, nullable=True), schema=schema)
    op.add_column("parked_events", sa.Column("message_digest", sa.LargeBinary, nullable=True), schema=schema)
    _execute(f"UPDATE {{t}} SET message_digest = {_DIGEST}", schema, "parked_events")  # noqa: S608 - constants
    op.alter_column("parked_events", "message_digest", nullable=False, schema=schema)
    op.drop_constraint(
        "parked_events_handler_topic_partition_kafka_offset_key", "parked_events", schema=schema
    )
    op.create_unique_constraint(
        "parked_events_message",
        "parked_events",
        ["handler", "topic", "partition", "kafka_offset", "message_digest"],
        schema=schema,
    )


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    op.drop_constraint("parked_events_message", "parked_events", schema=schema)
    # Two messages parked at one offset cannot both stay under the old key: the later one goes.
    _execute(
        "DELETE FROM {t} p USING {t} q WHERE p.handler = q.handler AND p.topic = q.topic "
        "AND p.partition = q.partition AND p.kafka_offset = q.kafka_offset AND p.id > q.id",
        schema,
        "parked_events",
    )
    op.create_unique_constraint(
        "parked_events_handler_topic_partition_kafka_offset_key",
        "parked_events",
        ["handler", "topic", "partition", "kafka_offset"],
        schema=schema,
    )
    op.drop_column("parked_events", "message_digest", schema=schema)
    op.drop_column("strong_handlers", "carries", schema=schema)
    op.add_column(
        "handler_acks",
        sa.Column("stream_version", sa.BigInteger, nullable=False, server_default="0"),
        schema=schema,
    )
    # Only what is acknowledged without a gap from version 1 may stand for every earlier version.
    _execute(
        "UPDATE {t} SET stream_version = coalesce(("
        "SELECT upper(r) - 1 FROM unnest(versions) AS r WHERE lower(r) = 1), 0)",
        schema,
        "handler_acks",
    )
    op.alter_column("handler_acks", "stream_version", server_default=None, schema=schema)
    op.drop_column("handler_acks", "versions", schema=schema)
