"""Several ``tidings worker`` processes sharing handlers' consumer groups: order, rebalances, kill -9."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from pathlib import Path

from confluent_kafka.admin import AdminClient

from eventstore import PostgresEventStore
from tests.eventstore.relay_support import Writers
from tests.torture import kill_rounds
from tests.workers.cli_support import WorkerProcess, assigned, rows, worker_env
from tests.workers.process_apps import create_tables
from tests.workers.worker_support import eventually, noted, stack
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema

APP = "tests.workers.process_apps:build"
STATIC_SESSION_MS = 30_000


def group_state(namespace: KafkaNamespace, group: str) -> str:
    admin = AdminClient({"bootstrap.servers": namespace.bootstrap_servers})
    description = admin.describe_consumer_groups([group])[group].result(timeout=30)
    return str(description.state.name)


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
            Writers(event_store, streams=24, pause=0.001, make=noted) as writers,
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
        # A killed member's partitions move once its session times out: 6 s instead of librdkafka's 45.
        args = [APP, "--handler", f"{kafka_namespace.prefix}tally", "--partitions", "8"]
        args += ["--kafka", "session.timeout.ms=6000"]
        with (
            WorkerProcess(args, env, tmp_path / "a.log") as a,
            WorkerProcess(args, env, tmp_path / "b.log") as b,
            Writers(event_store, streams=16, pause=0.001, make=noted) as writers,
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


def test_kill_9_loop_with_static_membership_each_member_comes_back_to_its_partitions(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    url, schema = postgres_schema.server_url, postgres_schema.name
    create_tables(url, schema)
    rng = random.Random(7)

    def projected() -> int:
        return sum(events for (events,) in rows(url, schema, "tally", "events"))

    with stack(event_store, kafka_namespace, partitions=6) as s:
        env = worker_env(postgres_schema, kafka_namespace, s.app_name, TIDINGS_TEST_STATIC="1")
        # Static members do not leave the group when they stop: they expire after the session timeout.
        # A member keeps its partitions only if its replacement joins within that timeout, and a new
        # `tidings worker` process takes 2-3 s to join on a quiet machine and more than 15 s on a loaded
        # 2-core CI machine: the timeout leaves room for that (the chart's default is 45 s).
        args = [APP, "--handler", f"{kafka_namespace.prefix}tally", "--partitions", "6"]
        args += ["--kafka", f"session.timeout.ms={STATIC_SESSION_MS}"]

        def start(member: str, round_: int) -> WorkerProcess:
            return WorkerProcess([*args, "--instance-id", member], env, tmp_path / f"{member}.{round_}.log")

        workers = {member: start(member, 0) for member in ("w0", "w1")}
        restarts: list[float] = []
        try:
            with Writers(event_store, streams=12, pause=0.001, make=noted) as writers:
                eventually(lambda: all(assigned(w) for w in workers.values()), what="both members assigned")
                eventually(
                    lambda: (
                        sorted(assigned(workers["w0"]) + assigned(workers["w1"]))
                        == sorted(f"{s.topic}[{p}]" for p in range(6))
                    ),
                    what="the partitions shared out",
                )
                for round_ in range(1, kill_rounds(4) + 1):
                    owned = {member: assigned(worker) for member, worker in workers.items()}
                    victim = rng.choice(sorted(workers))
                    before = projected()
                    eventually(
                        lambda b=before: projected() > b + 100, what=f"projecting before kill {round_}"
                    )
                    workers[victim].kill()
                    killed = time.monotonic()
                    workers[victim] = start(victim, round_)
                    # The same member id takes its partitions back at once: no rebalance moved them.
                    eventually(
                        lambda v=victim, o=owned: assigned(workers[v]) == o[v],
                        timeout=STATIC_SESSION_MS / 1000,
                        what=f"{victim} back to its partitions {owned[victim]} before its session timed out",
                    )
                    restarts.append(time.monotonic() - killed)
                    for member, worker in workers.items():
                        assert assigned(worker) == owned[member], f"{member} kept its partitions"
                appended = writers.stop()
            eventually(lambda: projected() >= len(appended), timeout=120, what="every event projected")
        finally:
            for worker in workers.values():
                if worker.process.poll() is None:
                    worker.terminate()
        eventually(
            lambda: group_state(kafka_namespace, f"{kafka_namespace.prefix}tally") == "EMPTY",
            STATIC_SESSION_MS / 1000 + 30,
            what="the static members expired",
        )
    print(f"kill -9 to partitions back, per round: {[round(r, 1) for r in restarts]} s")
    expected: dict[str, list[int]] = defaultdict(list)
    for recorded in event_store.read_all_forward(1, count=len(appended) + 10):
        expected[recorded.stream_id].append(recorded.event_number or 0)
    tally = {stream: (events, numbers) for stream, events, numbers in rows(url, schema, "tally")}
    for stream, numbers in expected.items():
        assert tally[stream] == (len(numbers), numbers), f"{stream}: each event projected once, in order"
