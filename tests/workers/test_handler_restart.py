"""A handler its error policy stops: the process stays up, the other handlers go on, readiness, the
metric and the store say so, and `tidings handler restart` resumes it from the failed event."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from eventstore import PostgresEventStore
from tests.workers import apps
from tests.workers.cli_support import WorkerProcess, rows, tidings, worker_env
from tests.workers.worker_support import append_noted, eventually, stack
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema

APP = "tests.workers.apps:build"


def status_of(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    result = tidings("status", "--app", APP, "--json", env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return {h["name"]: h for h in json.loads(result.stdout)["handlers"]}


def stopped_metric(worker: WorkerProcess, handler: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f'tidings_handler_stopped{{handler="{handler}"}}'):
                return float(line.rsplit(" ", 1)[1])
    return None


def test_a_stopped_handler_waits_without_a_restart_storm_and_resumes_from_the_failed_event(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    url, schema = postgres_schema.server_url, postgres_schema.name
    apps.create_tables(url, schema)
    picky, journal = f"{kafka_namespace.prefix}picky", f"{kafka_namespace.prefix}journal"
    with stack(event_store, kafka_namespace, partitions=2) as s:
        env = worker_env(postgres_schema, kafka_namespace, s.app_name, TIDINGS_TEST_STOP_ON_POISON="1")
        ok = append_noted(event_store, streams=2, per_stream=2, prefix="ok")
        with WorkerProcess([APP], env, tmp_path / "worker.log") as worker:
            eventually(lambda: len(rows(url, schema, "picky_seen")) == len(ok), what="picky caught up")
            running = status_of(env)
            assert (running[picky]["ordering"], running[picky]["state"]) == ("global", "")
            assert running[picky]["active"], "the session of picky's active consumer"
            assert (running[journal]["ordering"], running[journal]["active"]) == ("per_key", None)
            not_stopped = tidings("handler", "restart", picky, env=env)
            assert not_stopped.returncode == 1
            assert "is not stopped" in not_stopped.stderr

            with event_store.connection() as conn:
                conn.execute(f'INSERT INTO "{schema}".poison_keys VALUES (%s)', ("bad0",))
            append_noted(event_store, streams=1, per_stream=1, prefix="bad")
            later = append_noted(event_store, streams=2, per_stream=1, prefix="later")
            eventually(lambda: worker.readiness()[0] == 503, what="readiness failing")
            states = {h["handler"]: h for h in worker.readiness()[1]["handlers"]}
            assert states[picky]["state"] == "stopped"
            assert "Poisoned: poisoned key bad0" in states[picky]["reason"]
            # The others go on; the process stays up; the metric and the store say why.
            eventually(
                lambda: len(rows(url, schema, "journal")) == len(ok) + 1 + len(later), what="journal went on"
            )
            assert stopped_metric(worker, picky) == 1.0
            assert stopped_metric(worker, journal) == 0.0
            stopped = status_of(env)[picky]
            assert stopped["state"] == "stopped"
            assert "Poisoned: poisoned key bad0" in stopped["reason"]
            assert stopped["active"] is None
            (recorded,) = rows(url, schema, "handler_states", "handler, state, reason, event_number")
            assert recorded[:2] == (picky, "stopped")
            assert "Poisoned" in recorded[2]

            # The fix, then the restart: picky resumes from the event it stopped at, in order.
            with event_store.connection() as conn:
                conn.execute(f'DELETE FROM "{schema}".poison_keys')
            restarted = tidings("handler", "restart", picky, "--json", env=env)
            assert restarted.returncode == 0, restarted.stderr
            eventually(lambda: worker.readiness()[0] == 200, what="ready again")
            eventually(
                lambda: len(rows(url, schema, "picky_seen")) == len(ok) + 1 + len(later),
                what="picky handled the failed event and the later ones",
            )
            numbers = [n for (n,) in rows(url, schema, "picky_seen", "event_number", order="seq")]
            assert numbers == sorted(numbers)
            assert recorded[3] == numbers[len(ok)], "it resumed at the event it had stopped at"
            assert worker.process.poll() is None, "the process never exited: no restart storm"
            assert sum(line["message"] == "worker started" for line in worker.lines()) == 1
            assert stopped_metric(worker, picky) == 0.0
            assert rows(url, schema, "handler_states") == []
            assert worker.terminate() == 0
