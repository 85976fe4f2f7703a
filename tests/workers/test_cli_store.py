"""`tidings store rebase` and `tidings health` on a store moved to another cluster (the move is simulated as
in tests/eventstore/test_cluster_move.py)."""

from __future__ import annotations

import json
import os

from eventstore import ANY, EventData, PostgresEventStore, StoreConfig, migrate
from tests.eventstore.test_cluster_move import move_to_a_younger_cluster
from tests.workers.cli_support import tidings
from tidings import devservices
from tidings.pytest_plugin import PostgresSchema


def test_health_names_the_move_and_store_rebase_mends_it(
    postgres_schema: PostgresSchema, kafka_service: devservices.Service
) -> None:
    config = StoreConfig(postgres_schema.server_url, postgres_schema.name)
    migrate(config)
    with PostgresEventStore(config, sequencer=False) as store:
        store.append_to_stream("a", ANY, [EventData("E", b"numbered")])
        store.sequencer.catch_up()
        store.append_to_stream("a", ANY, [EventData("E", b"waiting")])
    move_to_a_younger_cluster(config)
    env = {
        **os.environ,
        "DATABASE_URL": postgres_schema.server_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_service.address,
        "TIDINGS_SCHEMA": postgres_schema.name,
    }

    health = tidings("health", "--json", env=env)
    assert health.returncode == 1, health.stdout + health.stderr
    checks = {c["name"]: c for c in json.loads(health.stdout)["checks"]}
    assert not checks["schema"]["ok"]
    assert f"run `tidings store rebase --schema {postgres_schema.name}`" in checks["schema"]["detail"]

    rebased = tidings("store", "rebase", "--json", env=env)
    assert rebased.returncode == 0, rebased.stderr
    report = json.loads(rebased.stdout)
    assert report["schema"] == postgres_schema.name
    assert report["rebased"] is True
    assert report["numbered"] == 1
    assert report["last_event_number"] == 2

    again = tidings("store", "rebase", env=env)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
    healthy = tidings("health", "--json", env=env)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr


def test_store_rebase_refuses_a_store_that_is_not_migrated(postgres_schema: PostgresSchema) -> None:
    env = {**os.environ, "DATABASE_URL": postgres_schema.server_url}
    result = tidings("store", "rebase", "--schema", f"{postgres_schema.name}_none", env=env)
    assert result.returncode == 2
    assert "run `tidings migrate` first" in result.stderr
