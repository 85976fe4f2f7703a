"""`tidings worker APP` as a process of its own, on the real services."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient
from typer.testing import CliRunner

from eventstore import PostgresEventStore
from tests.eventstore.relay_support import read_to_end
from tests.workers import apps
from tests.workers.cli_support import WorkerProcess, count, tidings, worker_env
from tests.workers.worker_support import append_noted, eventually, stack
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema
from workers import cli

APP = "tests.workers.apps:build"


def _committed(bootstrap_servers: str, group: str) -> dict[int, int]:
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
    return {tp.partition: tp.offset for tp in future.result(timeout=30).topic_partitions if tp.offset >= 0}


def test_the_worker_handles_events_serves_probes_and_exits_0_on_sigterm(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    url, schema = postgres_schema.server_url, postgres_schema.name
    apps.create_tables(url, schema)
    journal, picky = kafka_namespace.group("journal"), kafka_namespace.group("picky")
    with stack(event_store, kafka_namespace) as s:
        env = worker_env(postgres_schema, kafka_namespace, s.app_name, TIDINGS_TEST_STOP_ON_POISON="1")
        appended = append_noted(event_store, streams=3, per_stream=3, prefix="ok")
        with WorkerProcess([APP, "--partitions", "4"], env, tmp_path / "worker.log") as worker:
            eventually(worker.ready, timeout=30, what="/readyz answering 200")
            eventually(
                lambda: count(url, schema, "journal") == count(url, schema, "picky_seen") == len(appended),
                timeout=30,
                what="both handlers caught up",
            )
            _, document = worker.readiness()
            partitions = [f"{s.topic}[{p}]" for p in range(4)]
            assert {h["handler"]: (h["state"], h["assigned"]) for h in document["handlers"]} == {
                journal: ("running", partitions),
                picky: ("running", partitions),
            }
            assert worker.get("/healthz")[0] == 200
            status, metrics = worker.get("/metrics")
            assert status == 200
            for name in (journal, picky):
                handled = (
                    f'tidings_handler_events_total{{handler="{name}",outcome="handled"}} {len(appended)}.0'
                )
                assert handled in metrics.decode()

            # picky's policy answers Stop: the process stays up, says so, and is not ready.
            with event_store.connection() as conn:
                conn.execute(f'INSERT INTO "{schema}".poison_keys VALUES (%s)', ("bad0",))
            append_noted(event_store, streams=1, per_stream=1, prefix="bad")
            eventually(lambda: worker.readiness()[0] == 503, timeout=30, what="/readyz answering 503")
            eventually(
                lambda: any(
                    line.get("state") == "stopped" and line.get("handler") == picky
                    for line in worker.lines()
                    if line["message"].startswith("handler stopped: the worker stays up")
                ),
                timeout=10,
                what="the worker logging the stopped handler",
            )
            eventually(lambda: count(url, schema, "journal") == len(appended) + 1, timeout=30, what="journal")
            assert worker.get("/healthz")[0] == 200
            assert worker.terminate() == 0

        stopped = [line for line in worker.lines() if line["message"] == "worker stopped"]
        assert stopped
        assert stopped[-1]["handlers"] == {journal: "stopped", picky: "stopped"}
        # Leaving, the worker committed where journal got to: after the last message of each partition.
        last = {}
        for message in read_to_end(kafka_namespace.bootstrap_servers, [s.topic]):
            last[message.partition] = max(last.get(message.partition, -1), message.offset)
        assert _committed(kafka_namespace.bootstrap_servers, journal) == {p: o + 1 for p, o in last.items()}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.workers.apps", "APP must be module:attribute naming a WorkerApp (e.g. bank.workers:app)"),
        ("tests.workers.nowhere:app", "cannot import 'tests.workers.nowhere': no module named"),
        ("tests.workers.apps:nope", "module 'tests.workers.apps' has no attribute 'nope'"),
        ("tests.workers.apps:not_an_app", "tests.workers.apps:not_an_app is int, not a WorkerApp"),
    ],
)
def test_an_app_that_is_not_there_exits_2_saying_why(spec: str, message: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    result = tidings("worker", spec, env=env)
    assert result.returncode == 2, result.stderr
    assert f"error: {message}" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_handlers_and_an_unmigrated_store_exit_2(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema, kafka_namespace: KafkaNamespace
) -> None:
    env = worker_env(postgres_schema, kafka_namespace, kafka_namespace.topic("app"))
    result = tidings("worker", APP, "--handler", "nope", env=env)
    assert result.returncode == 2, result.stderr
    available = [kafka_namespace.group("journal"), kafka_namespace.group("picky")]
    assert f"error: no handler named 'nope'; this app has {available}" in result.stderr

    result = tidings("reset", "nope", "--app", APP, "--yes", env=env)
    assert result.returncode == 2, result.stderr
    assert f"error: no handler named 'nope'; this app has {available}" in result.stderr

    result = tidings("worker", APP, env={**env, "TIDINGS_SCHEMA": f"{postgres_schema.name}_none"})
    assert result.returncode == 2, result.stderr
    assert "is not migrated: run `tidings migrate` first" in result.stderr


@pytest.mark.parametrize(
    "command",
    [["worker"], ["reset"], ["parked", "list"], ["parked", "retry"], ["parked", "discard"]],
    ids=" ".join,
)
def test_every_operator_command_has_help_with_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(cli.app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Example: tidings " + " ".join(command) in result.output
