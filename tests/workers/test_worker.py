"""Worker in process: handler selection, probes and metrics, graceful stop; load_app's answers."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from eventstore import ConfigurationError, PostgresEventStore
from tests.workers import apps
from tests.workers.cli_support import rows
from tests.workers.worker_support import append_noted, eventually, stack
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema
from workers.app import WorkerConfig
from workers.worker import AppNotFound, Worker, load_app


def _get(worker: Worker, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _readiness(worker: Worker) -> tuple[int, dict[str, Any]]:
    status, body = _get(worker, "/readyz")
    return status, json.loads(body)


def test_readiness_follows_every_handler_and_liveness_outlives_a_stopped_one(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema, kafka_namespace: KafkaNamespace
) -> None:
    url, schema = postgres_schema.server_url, postgres_schema.name
    apps.create_tables(url, schema)
    with stack(event_store, kafka_namespace) as s:
        app = apps.build_app(s.app_name, kafka_namespace.prefix, schema, url, stop_on_poison=True)
        journal, picky = (h.name for h in app.handlers)
        ok = append_noted(event_store, streams=3, per_stream=2, prefix="ok")
        worker = Worker(app, s.config, port=0, host="127.0.0.1")
        with worker:
            eventually(lambda: _readiness(worker)[0] == 200, what="the worker ready")
            _, document = _readiness(worker)
            assert document["ready"] is True
            # picky runs in global order: ready while it stands by for its lock, running once it leads.
            eventually(
                lambda: (
                    {h["handler"]: h["state"] for h in _readiness(worker)[1]["handlers"]}
                    == {journal: "running", picky: "running"}
                ),
                what="both handlers running",
            )
            ordering = {
                h["handler"]: (h["ordering"], h["leading"]) for h in _readiness(worker)[1]["handlers"]
            }
            assert ordering == {journal: ("per_key", None), picky: ("global", True)}
            eventually(
                lambda: (
                    len(rows(url, schema, "picky_seen")) == len(ok)
                    and len(rows(url, schema, "journal")) == len(ok)
                ),
                what="both handlers caught up",
            )
            assert all(h["assigned"] for h in _readiness(worker)[1]["handlers"])

            # picky's error policy answers Stop: picky stops, journal goes on, the process stays alive.
            with event_store.connection() as conn:
                conn.execute(f'INSERT INTO "{schema}".poison_keys VALUES (%s)', ("bad0",))
            append_noted(event_store, streams=1, per_stream=1, prefix="bad")
            eventually(lambda: _readiness(worker)[0] == 503, what="readiness failing")
            _, document = _readiness(worker)
            states = {h["handler"]: h for h in document["handlers"]}
            assert document["ready"] is False
            assert states[picky]["state"] == "stopped"
            assert "Poisoned: poisoned key bad0" in states[picky]["reason"]
            assert states[journal]["state"] == "running"
            eventually(lambda: len(rows(url, schema, "journal")) == len(ok) + 1, what="journal went on")
            assert _get(worker, "/healthz") == (200, b'{"alive": true}')

            def metrics() -> str:
                status, body = _get(worker, "/metrics")
                assert status == 200
                return body.decode()

            stopped = f'tidings_handler_running{{handler="{picky}"}} 0.0'
            eventually(lambda: stopped in metrics(), what="picky's running gauge at 0")
            text = metrics()
            assert f'tidings_handler_running{{handler="{journal}"}} 1.0' in text
            assert f'tidings_handler_events_total{{handler="{picky}",outcome="handled"}} {len(ok)}.0' in text
            assert _get(worker, "/nope")[0] == 404
        states = {status.handler: status.state for status in worker.statuses()}
        assert states == {journal: "stopped", picky: "stopped"}
        assert {status.handler: status.reason for status in worker.statuses()}[journal] == ""


def test_handlers_are_chosen_by_name_and_unknown_names_or_a_taken_port_are_refused(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema
) -> None:
    app = apps.build_app("bank", "p.", postgres_schema.name, postgres_schema.server_url)
    config = WorkerConfig(event_store, "localhost:9092")
    assert [r.name for r in Worker(app, config).runners] == ["p.journal", "p.picky"]
    assert [r.name for r in Worker(app, config, ["p.picky", "p.picky"]).runners] == ["p.picky"]
    with pytest.raises(
        ConfigurationError, match=r"no handler named 'nope'; this app has \['p.journal', 'p.picky'\]"
    ):
        Worker(app, config, ["p.journal", "nope"])

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        worker = Worker(app, config, port=taken.getsockname()[1], host="127.0.0.1")
        with pytest.raises(ConfigurationError, match=r"cannot listen on 127\.0\.0\.1:\d+: Address already"):
            worker.start()
        assert [status.state for status in worker.statuses()] == ["starting", "starting"]  # none started
        assert not any(runner.stopping.is_set() for runner in worker.runners)


def test_load_app_takes_an_app_or_a_factory_and_says_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load_app("tests.workers.apps:example") is apps.example
    monkeypatch.setenv("TIDINGS_TEST_APP_NAME", "bank")
    monkeypatch.setenv("TIDINGS_TEST_PREFIX", "p.")
    monkeypatch.setenv("TIDINGS_SCHEMA", "s")
    monkeypatch.setenv("DATABASE_URL", "postgresql://nowhere/db")
    built = load_app("tests.workers.apps:build")
    assert built.name == "bank"
    assert [h.name for h in built.handlers] == ["p.journal", "p.picky"]

    (tmp_path / "needs_more.py").write_text("import a_module_nobody_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cases = {
        "tests.workers.apps": "APP must be module:attribute",
        "tests.workers.nowhere:app": "cannot import 'tests.workers.nowhere': "
        "no module named 'tests.workers.nowhere'",
        "needs_more:app": "importing 'needs_more' failed: ModuleNotFoundError: No module named "
        "'a_module_nobody_installed'",
        "tests.workers.apps:nope": "module 'tests.workers.apps' has no attribute 'nope'; "
        "its WorkerApps: example",
        "tests.workers.apps:not_an_app": "tests.workers.apps:not_an_app is int, not a WorkerApp",
        "tests.workers.apps:Example": "is type, not a WorkerApp",
        "tests.workers.apps:broken": "calling tests.workers.apps:broken() failed: RuntimeError: "
        "TIDINGS_TEST_APP_NAME is not set",
        "tests.workers.apps:not_a_factory": "tests.workers.apps:not_a_factory() returned str, "
        "not a WorkerApp",
    }
    for spec, message in cases.items():
        with pytest.raises(AppNotFound) as raised:
            load_app(spec)
        assert message in str(raised.value), spec
        assert isinstance(raised.value, ConfigurationError)
