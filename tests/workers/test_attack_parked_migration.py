"""Migration 0009 on a store with rows from before it: acknowledgements keep what they claimed, parked
events get the digest the worker computes (so a redelivered old message is not parked a second time),
and downgrading gives the old shape back."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from psycopg import sql

from eventstore import PostgresEventStore, StoreConfig, migrate, sqlalchemy_url
from eventstore.acknowledgements import Acknowledgements
from eventstore.migrate import _ALEMBIC_IN_USE, _alembic_config
from tests.workers.worker_support import read
from tidings.pytest_plugin import PostgresSchema
from workers.delivery import delivery_of
from workers.parking import ParkedEvents


def test_migration_0009_keeps_old_acknowledgements_and_digests_old_parked_rows(
    postgres_schema: PostgresSchema,
) -> None:
    config = StoreConfig(postgres_schema.server_url, schema=postgres_schema.name)
    assert migrate(config, "0008") == "0008"
    message = delivery_of("t", 0, 7, b"s0", b"not an event", [("event_id", b"x"), ("empty", None)])
    with PostgresEventStore(config) as store, store.connection() as conn:
        schema = config.schema
        conn.execute(
            sql.SQL("INSERT INTO {} (handler, stream_id, stream_version) VALUES ('h', 's-1', 3)").format(
                sql.Identifier(schema, "handler_acks")
            )
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (handler, topic, partition, kafka_offset, key, value, header_names, "
                "header_values, error) VALUES ('h', 't', 0, 7, %s, %s, %s, %s, 'bad')"
            ).format(sql.Identifier(schema, "parked_events")),
            (message.key, message.value, ["event_id", "empty"], [b"x", None]),
        )
    migrate(config)
    with PostgresEventStore(config) as store:
        acks, parked = Acknowledgements(store), ParkedEvents(store)
        assert acks.pending(["h"], "s-1", range(1, 4)) == [], "every version up to the old one"
        assert acks.pending(["h"], "s-1", 4) == ["h"]
        with store.connection() as conn:
            parked.park(conn, "h", message, "bad again")  # the same message, redelivered
        assert parked.count("h") == 1, "the old row's digest is the worker's"
        assert read(store, "SELECT count(*) FROM parked_events WHERE message_digest IS NULL") == [(0,)]
    engine = sa.create_engine(sqlalchemy_url(config.url), poolclass=sa.pool.NullPool)
    try:
        with _ALEMBIC_IN_USE, engine.begin() as connection:
            command.downgrade(_alembic_config(config, connection), "0008")
    finally:
        engine.dispose()
    with PostgresEventStore(config) as store:
        assert read(store, "SELECT handler, stream_id, stream_version FROM handler_acks") == [("h", "s-1", 3)]
        assert read(store, "SELECT count(*) FROM parked_events") == [(1,)]
