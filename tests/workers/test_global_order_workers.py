"""Global order on the real services: a handler in two `tidings worker` processes sees every event of an
8-partition topic in event_number order, and a kill -9 of the active one hands over without loss,
reorder or repeated effect."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from eventstore import ANY, PostgresEventStore
from tests.workers.cli_support import WorkerProcess, rows, worker_env
from tests.workers.process_apps import create_tables
from tests.workers.worker_support import eventually, noted, stack
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema

APP = "tests.workers.process_apps:build"
WRITERS = 16


class ManyWriters:
    """``WRITERS`` threads, each appending to its own streams as fast as it can until stopped."""

    def __init__(self, store: PostgresEventStore) -> None:
        self.store = store
        self.count = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._write, args=(w,), daemon=True) for w in range(WRITERS)]
        self.errors: list[BaseException] = []

    def __enter__(self) -> ManyWriters:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> int:
        self._stopping.set()
        for thread in self._threads:
            thread.join(30)
        assert not self.errors, self.errors
        return self.count

    def _write(self, writer: int) -> None:
        n = 0
        try:
            while not self._stopping.is_set():
                stream = f"w{writer}-s{n % 3}"
                self.store.append_to_stream(stream, ANY, [noted(stream, n // 3)])
                with self._lock:
                    self.count += 1
                n += 1
                self._stopping.wait(0.002)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.errors.append(exc)


def active(workers: list[WorkerProcess], handler: str) -> WorkerProcess | None:
    """The worker whose /readyz says it leads ``handler``'s global order (None while none does); never
    two at once."""
    leading = [
        w
        for w in workers
        if w.process.poll() is None
        and any(h["handler"] == handler and h.get("leading") for h in w.readiness()[1]["handlers"])
    ]
    assert len(leading) <= 1, "two active consumers at once"
    return leading[0] if leading else None


def test_a_global_order_handler_sees_every_event_in_order_across_a_kill_9(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    url, schema = postgres_schema.server_url, postgres_schema.name
    create_tables(url, schema)
    ledger = f"{kafka_namespace.prefix}ledger"
    with stack(event_store, kafka_namespace, partitions=8) as s:
        env = worker_env(postgres_schema, kafka_namespace, s.app_name)
        args = [APP, "--handler", ledger, "--partitions", "8"]
        first, second = (WorkerProcess(args, env, tmp_path / f"{name}.log") for name in ("a", "b"))
        with first, second, ManyWriters(event_store) as writers:
            eventually(lambda: first.ready() and second.ready(), what="both workers ready")
            eventually(lambda: active([first, second], ledger) is not None, what="one of them leads")
            leader = active([first, second], ledger)
            assert leader is not None
            eventually(lambda: writers.count >= 1500, what="appends while the active one works")
            eventually(lambda: len(rows(url, schema, "ledger_seen", "seq")) >= 500, what="events handled")
            os.kill(leader.process.pid, signal.SIGKILL)
            leader.process.wait(30)
            standby = second if leader is first else first
            # The standby takes over within seconds; a third worker stands by in the dead one's place.
            eventually(lambda: active([standby], ledger) is standby, timeout=15, what="the standby leads")
            with WorkerProcess(args, env, tmp_path / "c.log") as third:
                eventually(third.ready, what="a new standby")
                eventually(lambda: writers.count >= 4000, what="appends after the hand-over")
                total = writers.stop()
                eventually(
                    lambda: len(rows(url, schema, "ledger_seen", "seq")) >= total,
                    timeout=180,
                    what="every event handled",
                )
                assert standby.terminate() == 0
                assert third.terminate() == 0
    handled = [number for (number,) in rows(url, schema, "ledger_seen", "event_number", order="seq")]
    # Strictly 1..N in order: no loss, no reorder, and (unique key, exactly-once projection) no repeat.
    assert handled == list(range(1, total + 1))
    pids = {pid for (pid,) in rows(url, schema, "ledger_seen", "pid")}
    assert len(pids) == 2, "the killed worker, then the standby that took over"
