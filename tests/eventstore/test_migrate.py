"""Migrations run inside the store's schema, are idempotent, and are safe to run concurrently."""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from eventstore import ConfigurationError, StoreConfig, current_revision, head_revision, migrate
from tests.support import tidings_script
from tidings.pytest_plugin import PostgresSchema


def _store(schema: PostgresSchema, suffix: str = "") -> StoreConfig:
    return StoreConfig(schema.server_url, f"{schema.name}{suffix}")


def _drop(schema: PostgresSchema, name: str) -> None:
    with psycopg.connect(schema.server_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(psycopg.sql.Identifier(name)))


def test_migrate_brings_a_new_schema_to_head_once(postgres_schema: PostgresSchema) -> None:
    store = _store(postgres_schema, "_store")
    try:
        assert current_revision(store) is None
        assert migrate(store) == head_revision()
        with psycopg.connect(store.url) as conn:
            first = conn.execute(
                psycopg.sql.SQL("SELECT value FROM {}.store_info WHERE key = 'store_id'").format(
                    psycopg.sql.Identifier(store.schema)
                )
            ).fetchone()
        assert migrate(store) == head_revision()  # nothing left to do, nothing redone
        with psycopg.connect(store.url) as conn:
            second = conn.execute(
                psycopg.sql.SQL("SELECT value FROM {}.store_info WHERE key = 'store_id'").format(
                    psycopg.sql.Identifier(store.schema)
                )
            ).fetchone()
        assert first == second
        assert first is not None
    finally:
        _drop(postgres_schema, store.schema)


def test_stores_in_one_database_are_separate(postgres_schema: PostgresSchema) -> None:
    one, two = _store(postgres_schema, "_one"), _store(postgres_schema, "_two")
    try:
        migrate(one)
        assert current_revision(one) == head_revision()
        assert current_revision(two) is None
    finally:
        _drop(postgres_schema, one.schema)
        _drop(postgres_schema, two.schema)


def test_concurrent_migrations_of_one_schema_serialise(postgres_schema: PostgresSchema) -> None:
    store = _store(postgres_schema, "_race")
    env = {**os.environ, "DATABASE_URL": store.url, "TIDINGS_SCHEMA": store.schema}
    try:
        # Several processes (pods starting together) and several threads of one process at once.
        processes = [
            subprocess.Popen(
                [tidings_script(), "migrate"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        with ThreadPoolExecutor(max_workers=3) as pool:
            revisions = list(pool.map(lambda _: migrate(store), range(3)))
        for process in processes:
            stdout, stderr = process.communicate(timeout=120)
            assert process.returncode == 0, stderr
            assert stdout.strip() == f"schema {store.schema} at revision {head_revision()}"
        assert revisions == [head_revision()] * 3
        with psycopg.connect(store.url) as conn:
            rows = conn.execute(
                psycopg.sql.SQL("SELECT count(*) FROM {}.store_info").format(
                    psycopg.sql.Identifier(store.schema)
                )
            ).fetchone()
        assert rows == (1,)
    finally:
        _drop(postgres_schema, store.schema)


@pytest.mark.parametrize(
    "bad", ["", "Bank", "bank-1", "1bank", 'x"; DROP TABLE y; --', "pg_catalog", "a" * 64]
)
def test_invalid_schema_names_are_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid schema name"):
        StoreConfig("postgresql://localhost/x", bad)


def test_non_postgres_url_is_refused_without_echoing_the_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        StoreConfig("mysql://root:hunter2@db/app")
    assert "hunter2" not in str(caught.value)
    assert "***" in str(caught.value)
