"""`tidings parked list | retry | discard` against a running `tidings worker`, on the real services."""

from __future__ import annotations

import json
from pathlib import Path

from eventstore import PostgresEventStore
from tests.workers import apps
from tests.workers.cli_support import WorkerProcess, rows, tidings, worker_env
from tests.workers.worker_support import Noted, append_noted, eventually, mapper, stack
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema
from workers.parking import ParkedEvents


def test_a_poison_key_parks_until_retried_after_the_fix_or_discarded(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    url, schema = postgres_schema.server_url, postgres_schema.name
    apps.create_tables(url, schema)
    picky = kafka_namespace.group("picky")
    parked = ParkedEvents(event_store)

    def poison(key: str, poisoned: bool = True) -> None:
        with event_store.connection() as conn:
            if poisoned:
                conn.execute(f'INSERT INTO "{schema}".poison_keys VALUES (%s)', (key,))
            else:
                conn.execute(f'DELETE FROM "{schema}".poison_keys WHERE key = %s', (key,))

    def seen(stream: str) -> list[int]:
        return [n for s, n in rows(url, schema, "picky_seen", "stream_id, n", order="seq") if s == stream]

    poison("bad0")
    poison("bad1")
    with stack(event_store, kafka_namespace) as s:
        env = worker_env(postgres_schema, kafka_namespace, s.app_name)
        ok = append_noted(event_store, streams=2, per_stream=3, prefix="ok")
        append_noted(event_store, streams=2, per_stream=3, prefix="bad")
        args = ["tests.workers.apps:build", "--handler", picky, "--partitions", "4"]
        with WorkerProcess(args, env, tmp_path / "worker.log") as worker:
            # Other keys go on; each poison key parks, with the events behind it.
            eventually(lambda: parked.count(picky) == 6, timeout=30, what="six events parked")
            eventually(lambda: len(rows(url, schema, "picky_seen")) == len(ok), timeout=30, what="ok keys")
            assert seen("bad0") == seen("bad1") == []

            listed = tidings("parked", "list", "--handler", picky, "--json", env=env)
            assert listed.returncode == 0, listed.stderr
            documents = json.loads(listed.stdout)
            bad0 = [d for d in documents if d["key"] == "bad0"]
            assert [d["stream_id"] for d in documents].count("bad1") == 3
            assert len(bad0) == 3
            assert bad0[0]["error"] == "gave up after 1 attempts: Poisoned: poisoned key bad0"
            assert {d["error"] for d in bad0[1:]} == {"behind an earlier parked event of its key"}
            assert [d["event_number"] for d in bad0] == sorted(d["event_number"] for d in bad0)
            assert {(d["handler"], d["topic"], d["event_type"], d["released"]) for d in documents} == {
                (picky, s.topic, "tests.Noted", False)
            }
            table = tidings("parked", "list", env=env)
            assert table.returncode == 0, table.stderr
            assert "6 parked event(s)" in table.stdout
            first = bad0[0]
            assert f"{first['topic']}[{first['partition']}]@{first['offset']}" in table.stdout

            assert tidings("parked", "retry", picky, env=env).returncode == 2
            nothing = tidings("parked", "retry", picky, "--key", "nobody", env=env)
            assert nothing.returncode == 1
            assert f"nothing parked for '{picky}' (key 'nobody')" in nothing.stderr

            # After the fix, a retry hands the key's events back in order; the key then runs live.
            poison("bad0", poisoned=False)
            retried = tidings("parked", "retry", picky, "--key", "bad0", env=env)
            assert retried.returncode == 0, retried.stderr
            assert f"released 3 parked event(s) of '{picky}' (key 'bad0')" in retried.stdout
            eventually(lambda: seen("bad0") == [0, 1, 2], timeout=30, what="bad0 handled in order")
            assert parked.count(picky) == 3
            event_store.append_to_stream("bad0", 3, [mapper.to_event_data(Noted("bad0", 3))])
            eventually(lambda: seen("bad0") == [0, 1, 2, 3], timeout=30, what="bad0 handled live")

            # Discarding: by id, then the rest; the handler never sees them, and the key goes on.
            ids = [d["id"] for d in documents if d["key"] == "bad1"]
            one = tidings("parked", "discard", picky, "--id", str(ids[0]), env=env)
            assert one.returncode == 0, one.stderr
            assert f"discarded 1 parked event(s) of '{picky}'" in one.stdout
            assert [p.id for p in parked.list(picky)] == ids[1:]
            rest = tidings("parked", "discard", picky, "--all", env=env)
            assert rest.returncode == 0, rest.stderr
            assert f"discarded 2 parked event(s) of '{picky}' (every key)" in rest.stdout
            assert tidings("parked", "discard", picky, "--all", env=env).returncode == 1
            assert tidings("parked", "discard", picky, "--all", "--key", "bad1", env=env).returncode == 2
            poison("bad1", poisoned=False)
            gauge = f'tidings_handler_parked_events{{handler="{picky}"}} 0.0'
            eventually(lambda: gauge in worker.get("/metrics")[1].decode(), timeout=10, what="none parked")
            event_store.append_to_stream("bad1", 3, [mapper.to_event_data(Noted("bad1", 3))])
            eventually(lambda: seen("bad1") == [3], timeout=30, what="bad1 handled live")
            assert worker.terminate() == 0
    listed = tidings("parked", "list", "--json", env=env)
    assert json.loads(listed.stdout) == []
