"""`tidings reset HANDLER --app APP`: refused while a worker runs it; a projection rebuilt identically."""

from __future__ import annotations

from pathlib import Path

from confluent_kafka.admin import AdminClient

from eventstore import PostgresEventStore
from tests.workers import apps
from tests.workers.cli_support import WorkerProcess, rows, tidings, worker_env
from tests.workers.worker_support import append_noted, eventually, stack
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema
from workers.delivery import delivery_of
from workers.parking import ParkedEvents

APP = "tests.workers.apps:build"


def _groups(bootstrap_servers: str) -> set[str]:
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    return {g.group_id for g in admin.list_consumer_groups(request_timeout=30).result().valid}


def test_reset_is_refused_while_a_worker_runs_and_then_rebuilds_the_projection(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    url, schema = postgres_schema.server_url, postgres_schema.name
    apps.create_tables(url, schema)
    journal, picky = kafka_namespace.group("journal"), kafka_namespace.group("picky")
    parked = ParkedEvents(event_store)

    def positions(table: str) -> int:
        return sum(1 for (handler,) in rows(url, schema, table, "handler") if handler == journal)

    with stack(event_store, kafka_namespace) as s:
        env = worker_env(postgres_schema, kafka_namespace, s.app_name)
        appended = append_noted(event_store, streams=3, per_stream=4)
        with event_store.connection() as conn:
            for handler in (journal, picky):
                parked.park(conn, handler, delivery_of(s.topic, 0, 99, b"k", b"junk", []), "unreadable")
        worker_args = [APP, "--handler", journal, "--partitions", "4"]
        with WorkerProcess(worker_args, env, tmp_path / "worker-1.log") as worker:
            eventually(lambda: len(rows(url, schema, "journal")) == len(appended), timeout=30, what="journal")
            built = rows(url, schema, "journal")

            refused = tidings("reset", journal, "--app", APP, "--yes", env=env)
            assert refused.returncode == 1, refused.stderr
            assert (
                f"handler '{journal}' is running: its consumer group has 1 active member(s)" in refused.stderr
            )
            assert "Scale the workers that run it to zero first" in refused.stderr
            assert rows(url, schema, "journal") == built
            assert worker.terminate() == 0
        assert positions("handler_checkpoints") > 0
        assert positions("handler_subscriptions") == 1

        declined = tidings("reset", journal, "--app", APP, env=env, input="n\n")
        assert declined.returncode == 1
        assert f"Reset '{journal}'? This will empty the tables {schema}.journal" in declined.stdout
        assert rows(url, schema, "journal") == built
        assert rows(url, schema, "resets") == []

        reset = tidings("reset", journal, "--app", APP, "--yes", env=env)
        assert reset.returncode == 0, reset.stderr
        assert f"truncated {schema}.journal" in reset.stdout
        assert "1 parked event(s) deleted; consumer group deleted" in reset.stdout
        assert rows(url, schema, "journal") == []
        assert positions("handler_checkpoints") == positions("handler_subscriptions") == 0
        assert [p.handler for p in parked.list()] == [picky]
        assert rows(url, schema, "resets", "handler") == [(journal,)]  # before_reset ran
        assert journal not in _groups(kafka_namespace.bootstrap_servers)

        with WorkerProcess(worker_args, env, tmp_path / "worker-2.log") as worker:
            eventually(lambda: rows(url, schema, "journal") == built, timeout=30, what="journal rebuilt")
            assert worker.terminate() == 0

        # A plain handler that never ran: no tables, no group; its parked events go.
        never_ran = tidings("reset", picky, "--app", APP, "--yes", env=env)
        assert never_ran.returncode == 0, never_ran.stderr
        assert never_ran.stdout.startswith(
            f"reset '{picky}': checkpoints and start_from subscription deleted"
        )
        assert "1 parked event(s) deleted; no consumer group to delete" in never_ran.stdout
        assert parked.list() == []
