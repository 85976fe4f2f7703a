"""The bank's transfer process manager end to end, in 1 and 2 ``tidings worker`` processes, against the
same commands dispatched directly.

Every run has a fresh store schema and fresh topics, dropped and deleted afterwards.

- Throughput: ``ACCOUNTS`` accounts are opened and funded, then ``BENCH_PM_TRANSFERS`` (default 2,000)
  ``RequestTransfer`` commands are dispatched (each withdraws and records ``TransferRequested``) and
  relayed (4 partitions) before anything is timed. Then 1 or 2 ``tidings worker`` processes start with
  ``TransferProcess`` (``concurrency`` 4); the time runs from their start (imports and group join
  included) until every transfer has its ``TransferCompleted``. Each transfer is three events for the
  process manager (requested, deposited, completed) and two commands (``ReceiveTransfer``,
  ``CompleteTransfer``), each committed with the instance's state and the checkpoint. Reference: the
  same two commands per transfer dispatched directly by one process (``Application.dispatch``, no
  Kafka, no process manager), over the same number of transfers: what the write side alone costs.
- Latency: with 2 workers running, a client requests ``RATE`` transfers a second for
  ``BENCH_PM_SECONDS`` (default 10); latency is from just before ``dispatch(RequestTransfer)`` to the
  ``created_at`` of the transfer's ``TransferCompleted`` (PostgreSQL's clock, same machine). Reference:
  the three commands dispatched directly in a row, timed the same way.
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient
from psycopg import sql

from bench.bench_workers import fresh_schema
from bench.results import Row
from eventstore import PostgresEventStore, StreamNotFound
from eventstore.relay import Relay, RelayConfig
from examples.bank.accounts import Deposit, OpenAccount, ReceiveTransfer, RequestTransfer
from examples.bank.events import events
from examples.bank.transfers import CompleteTransfer, TransferProcess, bank
from tidings import Application, EventMapper, devservices
from tidings.avro import AvroCodec, SchemaSet
from workers.app import WorkerApp

NAME = "process_managers"
TRANSFERS = int(os.environ.get("BENCH_PM_TRANSFERS", "2000"))
SECONDS = float(os.environ.get("BENCH_PM_SECONDS", "10"))
ACCOUNTS = 200
RATE = 50  # transfers/s in the latency case
PARTITIONS = 4
ROOT = Path(__file__).resolve().parent.parent
MAPPER = EventMapper(AvroCodec(events, SchemaSet.load(ROOT / "schemas")))


def worker_app() -> WorkerApp:
    """What the worker processes run (``tidings worker bench.bench_process_managers:worker_app``)."""
    name = os.environ["BENCH_PM_APP"]

    class Transfers(TransferProcess):
        name = f"{os.environ['BENCH_PM_APP']}.transfers"

    return WorkerApp(name, mapper=MAPPER, handlers=[Transfers], router=bank)


@contextlib.contextmanager
def fresh_store(url: str) -> Iterator[PostgresEventStore]:
    with fresh_schema(url) as config, PostgresEventStore(config) as store:
        yield store


def open_accounts(app: Application) -> list[uuid.UUID]:
    accounts = [uuid.uuid4() for _ in range(ACCOUNTS)]
    for account in accounts:
        app.dispatch(OpenAccount(account, "bench"))
        app.dispatch(Deposit(account, Decimal("1000000.00")))
    return accounts


def completed(store: PostgresEventStore) -> int:
    with store.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE stream_id LIKE 'transfer-%'").format(
                sql.Identifier(store.config.schema, "streams")
            )
        ).fetchone()
    return int(row[0]) if row else 0


def start_workers(store: PostgresEventStore, bootstrap: str, app_name: str, count: int) -> list[Any]:
    env = {
        **os.environ,
        "DATABASE_URL": store.config.url,
        "TIDINGS_SCHEMA": store.config.schema,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "BENCH_PM_APP": app_name,
    }
    script = str(Path(sys.executable).parent / "tidings")
    args = [script, "worker", "bench.bench_process_managers:worker_app", "--partitions", str(PARTITIONS)]
    return [
        subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(count)
    ]


def stop_workers(processes: list[Any]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_for(condition: Any, what: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark stalled: {what}")
        time.sleep(0.05)


def throughput(url: str, bootstrap: str, workers: int) -> dict[str, float]:
    with fresh_store(url) as store:
        app = Application(store, MAPPER, bank)
        accounts = open_accounts(app)
        rng = random.Random(workers)
        for _ in range(TRANSFERS):
            source, target = rng.sample(accounts, 2)
            app.dispatch(RequestTransfer(uuid.uuid4(), source, target, Decimal("1.00")))
        app_name = f"bench-pm-{uuid.uuid4().hex[:6]}"
        relay = Relay(store, RelayConfig(bootstrap, app=app_name, partitions=PARTITIONS))
        relay.start()
        try:
            wait_for(lambda: relay.last_published >= store.last_event_number(), "relaying")
            started = time.monotonic()
            processes = start_workers(store, bootstrap, app_name, workers)
            try:
                wait_for(lambda: completed(store) >= TRANSFERS, "every transfer completed")
                seconds = time.monotonic() - started
            finally:
                stop_workers(processes)
        finally:
            relay.stop()
            delete_topics(bootstrap, app_name)
    return {"seconds": round(seconds, 3), "transfers_per_s": round(TRANSFERS / seconds, 1)}


def direct_throughput(url: str) -> dict[str, float]:
    """The reference: the process manager's two commands per transfer, dispatched by one process."""
    with fresh_store(url) as store:
        app = Application(store, MAPPER, bank)
        accounts = open_accounts(app)
        rng = random.Random(0)
        pairs = [(uuid.uuid4(), *rng.sample(accounts, 2)) for _ in range(TRANSFERS)]
        for transfer, source, _ in pairs:
            app.dispatch(RequestTransfer(transfer, source, _, Decimal("1.00")))
        started = time.monotonic()
        for transfer, _, target in pairs:
            app.dispatch(ReceiveTransfer(target, transfer, Decimal("1.00")))
            app.dispatch(CompleteTransfer(transfer))
        seconds = time.monotonic() - started
    return {"seconds": round(seconds, 3), "transfers_per_s": round(TRANSFERS / seconds, 1)}


def latency(url: str, bootstrap: str) -> list[float]:
    with fresh_store(url) as store:
        app = Application(store, MAPPER, bank)
        accounts = open_accounts(app)
        app_name = f"bench-pm-{uuid.uuid4().hex[:6]}"
        relay = Relay(store, RelayConfig(bootstrap, app=app_name, partitions=PARTITIONS))
        relay.start()
        processes = start_workers(store, bootstrap, app_name, 2)
        requested: dict[uuid.UUID, float] = {}
        try:
            # Warm: one transfer through, so that the workers have joined before timing starts.
            warm = uuid.uuid4()
            app.dispatch(RequestTransfer(warm, accounts[0], accounts[1], Decimal("1.00")))
            wait_for(lambda: ending(store, warm) is not None, "the warm-up transfer", 120)
            rng = random.Random(1)
            start = time.monotonic()
            for i in range(int(RATE * SECONDS)):
                time.sleep(max(0.0, start + i / RATE - time.monotonic()))
                transfer = uuid.uuid4()
                source, target = rng.sample(accounts, 2)
                requested[transfer] = time.time()
                app.dispatch(RequestTransfer(transfer, source, target, Decimal("1.00")))
            wait_for(lambda: completed(store) >= len(requested) + 1, "every timed transfer completed")
            return [ending(store, t).created_at.timestamp() - at for t, at in requested.items()]  # type: ignore[union-attr]
        finally:
            stop_workers(processes)
            relay.stop()
            delete_topics(bootstrap, app_name)


def direct_latency(url: str) -> list[float]:
    with fresh_store(url) as store:
        app = Application(store, MAPPER, bank)
        accounts = open_accounts(app)
        rng = random.Random(1)
        samples = []
        for _ in range(int(RATE * SECONDS)):
            transfer = uuid.uuid4()
            source, target = rng.sample(accounts, 2)
            at = time.time()
            app.dispatch(RequestTransfer(transfer, source, target, Decimal("1.00")))
            app.dispatch(ReceiveTransfer(target, transfer, Decimal("1.00")))
            app.dispatch(CompleteTransfer(transfer))
            samples.append(ending(store, transfer).created_at.timestamp() - at)  # type: ignore[union-attr]
        return samples


def ending(store: PostgresEventStore, transfer: uuid.UUID) -> Any:
    try:
        (recorded,) = store.read_stream_forward(f"transfer-{transfer}")
    except StreamNotFound:
        return None
    return recorded


def delete_topics(bootstrap: str, app_name: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    with contextlib.suppress(Exception):
        for future in admin.delete_topics([f"{app_name}.events"], operation_timeout=30).values():
            future.result()


def _ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


def run(repeat: int = 1) -> list[Row]:
    rows: list[Row] = []
    with devservices.postgres() as postgres, devservices.kafka() as kafka:
        url, bootstrap = postgres.address, kafka.address
        reference = [direct_throughput(url) for _ in range(repeat)]
        ref_rate = statistics.median(r["transfers_per_s"] for r in reference)
        for workers in (1, 2):
            runs = [throughput(url, bootstrap, workers) for _ in range(repeat)]
            rate = statistics.median(r["transfers_per_s"] for r in runs)
            rows.append(
                Row(
                    NAME,
                    f"transfers end to end, {workers} worker process{'es' if workers > 1 else ''}",
                    "throughput",
                    "transfers/s",
                    rate,
                    "the same 2 commands per transfer dispatched directly, one process",
                    ref_rate,
                    rate / ref_rate,
                    {
                        "transfers": TRANSFERS,
                        "accounts": ACCOUNTS,
                        "partitions": PARTITIONS,
                        "runs": runs,
                        "reference_runs": reference,
                        "concurrency": TransferProcess.concurrency,
                    },
                )
            )
        ours, theirs = latency(url, bootstrap), direct_latency(url)
        for q, label in ((0.5, "p50"), (0.99, "p99")):
            rows.append(
                Row(
                    NAME,
                    f"request -> completed latency, {RATE} transfers/s, 2 worker processes",
                    f"{label}, lower is better (ratio reference / tidings)",
                    "ms",
                    _ms(ours, q),
                    "the 3 commands dispatched directly in a row",
                    _ms(theirs, q),
                    _ms(theirs, q) / _ms(ours, q),
                    {"transfers": len(ours), "seconds": SECONDS, "rate": RATE},
                )
            )
    return rows
