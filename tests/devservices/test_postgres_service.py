"""The provided PostgreSQL answers through SQLAlchemy and psycopg, and each test's schema is its own."""

from __future__ import annotations

import psycopg
import sqlalchemy as sa
from psycopg import sql

from tidings.pytest_plugin import PostgresSchema


def test_round_trip_through_psycopg(postgres_schema: PostgresSchema) -> None:
    with psycopg.connect(postgres_schema.url) as conn:
        conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL)")
        conn.execute("INSERT INTO notes VALUES (%s, %s), (%s, %s)", (1, "one", 2, "two"))
        conn.commit()
    with psycopg.connect(postgres_schema.url) as conn:
        rows = conn.execute("SELECT id, body FROM notes ORDER BY id").fetchall()
        (current_schema,) = conn.execute("SELECT current_schema()").fetchone() or (None,)
    assert rows == [(1, "one"), (2, "two")]
    assert current_schema == postgres_schema.name


def test_round_trip_through_sqlalchemy(postgres_schema: PostgresSchema) -> None:
    engine = sa.create_engine(postgres_schema.sqlalchemy_url)
    metadata = sa.MetaData()
    notes = sa.Table(
        "notes",
        metadata,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
    )
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(notes.insert(), [{"id": 1, "body": "one"}, {"id": 2, "body": "two"}])
        with engine.connect() as conn:
            rows = conn.execute(sa.select(notes.c.id, notes.c.body).order_by(notes.c.id)).all()
            tables = (
                conn.execute(
                    sa.text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                    {"s": postgres_schema.name},
                )
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [(1, "one"), (2, "two")]
    assert tables == ["notes"]


def test_rolled_back_writes_are_not_visible(postgres_schema: PostgresSchema) -> None:
    with psycopg.connect(postgres_schema.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id bigint PRIMARY KEY)")
    with psycopg.connect(postgres_schema.url) as conn:
        conn.execute("INSERT INTO notes VALUES (1)")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)


def test_schemas_of_two_tests_do_not_see_each_other(postgres_schema: PostgresSchema) -> None:
    other = PostgresSchema(f"{postgres_schema.name}_b", postgres_schema.server_url)
    with psycopg.connect(postgres_schema.server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(other.name)))
    try:
        with psycopg.connect(postgres_schema.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE only_here (x int)")
        with psycopg.connect(other.url) as conn:
            found = conn.execute("SELECT to_regclass('only_here')").fetchone()
        assert found == (None,)
    finally:
        with psycopg.connect(postgres_schema.server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(other.name)))
