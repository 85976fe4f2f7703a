"""Several ``tidings worker`` processes sharing handlers' consumer groups: order, rebalances, kill -9."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from eventstore import PostgresEventStore
from tests.workers.cli_support import WorkerProcess, rows, worker_env
from tests.workers.process_apps import create_tables
from tests.workers.worker_support import NotedWriters, eventually, stack
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema

APP = "tests.workers.process_apps:build"


def assigned(worker: WorkerProcess) -> list[str]:
    """The partitions the worker's (only) handler has now."""
    return list(worker.readiness()[1]["handlers"][0]["assigned"])


def test_per_key_order_with_concurrency_4_across_2_worker_processes(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    url, schema = postgres_schema.server_url, postgres_schema.name
    create_tables(url, schema)
    with stack(event_store, kafka_namespace, partitions=8) as s:
        env = worker_env(postgres_schema, kafka_namespace, s.app_name)
        args = [APP, "--handler", f"{kafka_namespace.prefix}ordered", "--partitions", "8"]
        with (
            WorkerProcess(args, env, tmp_path / "a.log") as a,
            WorkerProcess(args, env, tmp_path / "b.log") as b,
            NotedWriters(event_store, streams=24, pause=0.001) as writers,
        ):
            eventually(lambda: a.ready() and b.ready(), what="both workers ready")
            eventually(lambda: assigned(a) and assigned(b), what="both workers in the group")
            eventually(lambda: len(writers.appended) >= 1500, what="appends while both work")
            appended = writers.stop()
            eventually(
                lambda: len(rows(url, schema, "ordered_seen", "seq")) >= len(appended),
                timeout=120,
                what="every event handled",
            )
            assert a.terminate() == 0
            assert b.terminate() == 0
    seen = rows(url, schema, "ordered_seen", "stream_id, n, event_number, pid", order="seq")
    assert len(seen) == len(appended), "each event once (no rebalance, no crash: no redelivery)"
    by_stream: dict[str, list[int]] = defaultdict(list)
    for stream, n, _, _ in seen:
        by_stream[stream].append(n)
    for stream, ns in by_stream.items():
        assert ns == list(range(len(ns))), f"{stream} handled in order"
    assert len({pid for *_, pid in seen}) == 2, "both processes handled events"


def test_a_rebalance_and_a_kill_lose_nothing_and_project_each_event_once(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    url, schema = postgres_schema.server_url, postgres_schema.name
    create_tables(url, schema)

    def projected() -> int:
        return sum(events for (events,) in rows(url, schema, "tally", "events"))

    with stack(event_store, kafka_namespace, partitions=8) as s:
        env = worker_env(postgres_schema, kafka_namespace, s.app_name)
        args = [APP, "--handler", f"{kafka_namespace.prefix}tally", "--partitions", "8"]
        with (
            WorkerProcess(args, env, tmp_path / "a.log") as a,
            WorkerProcess(args, env, tmp_path / "b.log") as b,
            NotedWriters(event_store, streams=16, pause=0.001) as writers,
        ):
            eventually(lambda: a.ready() and b.ready(), what="two workers ready")
            eventually(lambda: assigned(a) and assigned(b), what="both workers in the group")
            eventually(lambda: projected() > 300, what="projecting with two workers")
            with WorkerProcess(args, env, tmp_path / "c.log") as c:
                # A third member joins while events flow: partitions move (cooperative-sticky).
                eventually(c.ready, what="the third worker ready")
                eventually(lambda: assigned(c), what="the third worker has partitions")
                before = projected()
                eventually(lambda: projected() > before + 300, what="projecting with three")
                a.kill()  # kill -9: no revocation, no commit; its partitions move after the session times out
                before = projected()
                eventually(lambda: projected() > before + 300, timeout=90, what="projecting after the kill")
                appended = writers.stop()
                eventually(lambda: projected() >= len(appended), timeout=120, what="every event projected")
                assert c.terminate() == 0
            assert b.terminate() == 0
    expected: dict[str, list[int]] = defaultdict(list)
    for recorded in event_store.read_all_forward(1, count=len(appended) + 10):
        expected[recorded.stream_id].append(recorded.event_number or 0)
    tally = {stream: (events, numbers) for stream, events, numbers in rows(url, schema, "tally")}
    assert set(tally) == set(expected)
    for stream, numbers in expected.items():
        assert tally[stream] == (len(numbers), numbers), f"{stream}: each event projected once, in order"
