"""`tidings demo`: the bank, end to end, on real PostgreSQL and Kafka, checked.

1. Provide the services (``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS`` when set, else Docker, else local
   processes) and migrate a fresh schema.
2. Start a relay and two workers (``tidings relay``, ``tidings worker examples.bank.workers:build``) as
   real processes, and wait until their ``/readyz`` say so.
3. Open the accounts and request the transfers from concurrent clients, with live progress; with
   ``--kill-worker``, kill -9 a worker halfway and start another, as Kubernetes would.
4. Wait until every transfer has ended, then check the invariants (``examples.bank.demo.verify``): money
   conserved, each transfer completed or compensated once, the read model equal to the aggregates.
5. Print a summary (throughput, settlement latency, relay and handler lag), stop the processes, drop
   what the run created (unless ``--keep``), and exit 1 if an invariant failed.

The bank's code lives in ``examples/`` of a checkout (or the bank's image), not in the installed
package: the demo says so if it cannot import it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import IO, Annotated, Any

import psycopg
import typer
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from psycopg import sql
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from eventstore import ConfigurationError, PostgresEventStore, StoreConfig, migrate, validate_schema
from eventstore.relay import relay_status
from tidings import devservices
from workers.cli_options import EXIT_FAILED, EXIT_USAGE, fail

EXIT_SERVICE = 3

__all__ = ["demo_command"]

err = Console(stderr=True)
out = Console()

WORKER_APP = "examples.bank.workers:build"
READY_TIMEOUT = 120.0
FAST_FAILOVER = ("--kafka", "session.timeout.ms=6000", "--kafka", "heartbeat.interval.ms=1000")
"""A killed worker's partitions wait for its session to time out (45 s by default) before another member
takes them; the demo shortens that, as a deployment that values failover over tolerance of pauses would."""


def demo_command(
    accounts: Annotated[int, typer.Option(min=2, help="Accounts to open.")] = 200,
    transfers: Annotated[int, typer.Option(min=1, help="Transfers to request.")] = 2500,
    rate: Annotated[
        float, typer.Option(min=0, help="Transfers requested per second (0: as fast as the clients can).")
    ] = 50.0,
    concurrency: Annotated[int, typer.Option(min=1, help="Clients dispatching at once.")] = 8,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes to start.")] = 2,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions of the demo's topics.")] = 4,
    kill_worker: Annotated[
        bool, typer.Option("--kill-worker", help="kill -9 a worker halfway, then start another.")
    ] = False,
    schema: Annotated[
        str | None, typer.Option(help="The store's schema (default: a fresh demo_<id>, dropped after).")
    ] = None,
    app_name: Annotated[
        str | None, typer.Option("--app", help="The application's name, its topics' prefix (default: fresh).")
    ] = None,
    start_processes: Annotated[
        bool,
        typer.Option(
            help="Start the relay and workers (--no-start-processes: they run already, as in compose)."
        ),
    ] = True,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the schema and topics the run created.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the transfers to end.")] = 300.0,
    seed: Annotated[int, typer.Option(help="Seed of the workload (the same seed, the same plan).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON for scripts.")] = False,
) -> None:
    """Run the bank end to end on real services and check its invariants; exit 1 if one fails.

    Starts a relay and WORKERS worker processes, opens ACCOUNTS accounts, requests TRANSFERS transfers
    from CONCURRENCY clients at RATE a second (some to closed or unknown accounts, which are
    compensated), waits for every one to end, then checks that money is conserved, that each transfer
    completed or was compensated exactly once, and that the read model equals the aggregates.

    Examples: [bold]tidings demo[/] · [bold]tidings demo --accounts 20 --transfers 200 --kill-worker[/] ·
    [bold]tidings demo --no-start-processes --schema bank --app bank[/] (beside running workers)
    """
    bank = _import_bank()
    fresh = schema is None
    run_id = uuid.uuid4().hex[:8]
    try:
        schema = validate_schema(schema or f"demo_{run_id}")
    except ConfigurationError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    app_name = app_name or (f"demo-{run_id}" if fresh else schema)
    plan = bank.demo.plan(accounts, transfers, seed)
    try:
        with ExitStack() as stack:
            with err.status("providing PostgreSQL and Kafka..."):
                running = stack.enter_context(devservices.services())
            for service in (running.postgres, running.kafka):
                err.print(f"{service.kind}: {service.source}, ready in {service.started_in:.1f}s")
            config = StoreConfig(running.postgres.address, schema)
            err.print(f"schema {schema} migrated to revision {migrate(config)}")
            if fresh and not keep:
                stack.callback(_drop, config, running.kafka.address, app_name)
            env = {
                **os.environ,
                "DATABASE_URL": running.postgres.address,
                "KAFKA_BOOTSTRAP_SERVERS": running.kafka.address,
                "TIDINGS_SCHEMA": schema,
                "TIDINGS_APP": app_name,
                "TIDINGS_LOG_FORMAT": "json",
            }
            fleet = stack.enter_context(_Fleet(env, partitions)) if start_processes else None
            if fleet is not None:
                with err.status(f"starting a relay and {workers} workers..."):
                    fleet.start(workers)
                err.print(f"relay and {workers} workers ready; their logs are in {fleet.logs}")
            store = stack.enter_context(PostgresEventStore(config))
            lag = _LagSampler(store, running.kafka.address, f"{app_name}.events", _groups(app_name))
            stack.callback(lag.close)
            report = _Run(bank, store, plan, concurrency, rate, fleet, lag, kill_worker, timeout).execute()
    except devservices.ServiceError as exc:
        raise fail(str(exc), EXIT_SERVICE) from exc
    except _ProcessFailed as exc:
        raise fail(str(exc), EXIT_FAILED) from exc
    _print(report, as_json)
    if report.problems:
        raise typer.Exit(EXIT_FAILED)


# --- the run ------------------------------------------------------------------------------------------


@dataclass
class Report:
    accounts: int
    requested: int
    refused: int
    completed: int
    compensated: int
    unended: int
    seconds: float
    latencies: list[float]
    relay_lag_max: int
    relay_lag_end: int
    handler_lag_max: int
    handler_lag_end: int
    worker_restarts: int
    problems: list[str]

    def summary(self) -> dict[str, Any]:
        settled = self.completed + self.compensated
        return {
            "ok": not self.problems,
            "accounts": self.accounts,
            "transfers_requested": self.requested,
            "transfers_refused": self.refused,
            "transfers_completed": self.completed,
            "transfers_compensated": self.compensated,
            "transfers_unended": self.unended,
            "seconds": round(self.seconds, 3),
            "transfers_per_second": round(settled / self.seconds, 1) if self.seconds else 0.0,
            "latency_p50_ms": _percentile(self.latencies, 50),
            "latency_p99_ms": _percentile(self.latencies, 99),
            "relay_lag_max": self.relay_lag_max,
            "relay_lag_end": self.relay_lag_end,
            "handler_lag_max": self.handler_lag_max,
            "handler_lag_end": self.handler_lag_end,
            "worker_restarts": self.worker_restarts,
            "problems": self.problems,
        }


class _Run:
    """One pass of the workload, with progress, lag sampling and the checks at the end."""

    def __init__(
        self,
        bank: _Bank,
        store: PostgresEventStore,
        plan: Any,
        concurrency: int,
        rate: float,
        fleet: _Fleet | None,
        lag: _LagSampler,
        kill_worker: bool,
        timeout: float,
    ) -> None:
        from tidings import Application

        self.bank, self.store, self.plan, self.fleet = bank, store, plan, fleet
        self.kill_worker, self.timeout, self.rate = kill_worker, timeout, rate
        self.mapper = bank.workers.mapper()
        self.app = Application(store, self.mapper, bank.transfers.bank, timeout=30.0)
        self.counts = {"account": 0, "transfer": 0}
        self.workload = bank.demo.Workload(self.app, plan, concurrency, self._count)
        self.lag = lag
        self.workload_error: BaseException | None = None
        self._lock = threading.Lock()

    def _count(self, step: str) -> None:
        with self._lock:
            self.counts[step] += 1

    def execute(self) -> Report:
        plan = self.plan
        ids = [t.transfer_id for t in plan.transfers]
        restarts = 0
        with Progress(
            TextColumn("{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
            console=err,
        ) as progress:
            opened = progress.add_task("accounts opened", total=len(plan.accounts), note="")
            requested = progress.add_task("transfers requested", total=len(ids), note="")
            ended = progress.add_task("transfers ended", total=len(ids), note="")
            clients = threading.Thread(target=self._dispatch, name="demo-clients", daemon=True)
            started = time.monotonic()
            clients.start()
            deadline = started + self.timeout
            halfway_killed = not self.kill_worker
            while True:
                with self._lock:
                    progress.update(opened, completed=self.counts["account"])
                    progress.update(requested, completed=self.counts["transfer"])
                    done_requesting = not clients.is_alive()
                if not halfway_killed and self.counts["transfer"] >= len(ids) // 2 and self.fleet:
                    self.fleet.kill_and_replace_worker(0)
                    restarts += 1
                    halfway_killed = True
                    progress.update(requested, note="[yellow]worker 1 killed (-9) and started again[/]")
                settled = self.bank.demo.settled(self.store, ids)
                relay_lag, handler_lag = self.lag.sample()
                expected = len(ids) - len(self.workload.refused) if done_requesting else len(ids)
                progress.update(
                    ended, completed=settled, note=f"relay lag {relay_lag}, handler lag {handler_lag}"
                )
                if self.fleet is not None:
                    self.fleet.check()
                if done_requesting and settled >= expected:
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            if self.workload_error is not None:
                raise self.workload_error
            seconds = time.monotonic() - started
        with err.status("checking the invariants..."):
            facts, problems = self._verify(deadline=time.monotonic() + 60)
        settlements = [s[0] for s in facts.settlements.values() if s]
        relay_lag, handler_lag = self.lag.settled(timeout=10.0)
        refused = {transfer for transfer, _ in self.workload.refused}
        return Report(
            accounts=len(plan.accounts),
            requested=len(ids),
            refused=len(refused),
            completed=sum(1 for s in settlements if s.outcome == "completed"),
            compensated=sum(1 for s in settlements if s.outcome == "failed"),
            unended=len(ids) - len(refused) - len(settlements),
            seconds=seconds,
            latencies=[s.seconds for s in settlements],
            relay_lag_max=self.lag.relay_max,
            relay_lag_end=relay_lag,
            handler_lag_max=self.lag.handler_max,
            handler_lag_end=handler_lag,
            worker_restarts=restarts,
            problems=problems,
        )

    def _dispatch(self) -> None:
        try:
            self.workload.open_accounts()
            self.workload.request_transfers(self.rate)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            self.workload_error = error

    def _verify(self, deadline: float) -> tuple[Any, list[str]]:
        """The invariants, checked again until they hold or ``deadline`` passes: the read model may still
        be catching up with the last events when the transfers have ended."""
        refused = [transfer for transfer, _ in self.workload.refused]
        while True:
            facts = self.bank.demo.collect(self.store, self.mapper, self.plan)
            problems: list[str] = self.bank.demo.verify(self.plan, facts, refused)
            if not problems or time.monotonic() > deadline:
                return facts, problems
            time.sleep(1.0)


# --- measuring lag ------------------------------------------------------------------------------------


@dataclass
class _LagSampler:
    """The relay's lag (events numbered, not yet published) and the handlers' (messages not handled).

    Sampled at most once a second: each sample is a few round trips to PostgreSQL and Kafka.
    """

    store: PostgresEventStore
    bootstrap: str
    topic: str
    groups: list[str]
    relay_max: int = 0
    handler_max: int = 0
    _last: tuple[float, int, int] = (0.0, 0, 0)
    _admin: AdminClient | None = None
    _reader: Consumer | None = None

    def sample(self, *, fresh: bool = False) -> tuple[int, int]:
        at, relay, handler = self._last
        if fresh or time.monotonic() - at >= 1.0:
            relay = max((status.lag_events for status in relay_status(self.store)), default=0)
            handler = self._handler_lag()
            self._last = (time.monotonic(), relay, handler)
        self.relay_max, self.handler_max = max(self.relay_max, relay), max(self.handler_max, handler)
        return relay, handler

    def settled(self, timeout: float) -> tuple[int, int]:
        """The lags once the last events have gone through (the relay records its position when it has
        caught up, a moment after publishing), or as they stand after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            relay, handler = self.sample(fresh=True)
            if (relay, handler) == (0, 0) or time.monotonic() > deadline:
                return relay, handler
            time.sleep(0.5)

    def _handler_lag(self) -> int:
        bootstrap = self.bootstrap
        if self._admin is None or self._reader is None:
            self._admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
            # Reads watermarks only: it never subscribes, so it joins no group.
            self._reader = Consumer(
                {"bootstrap.servers": bootstrap, "group.id": "tidings-demo-lag", "log_level": 0}
            )
        try:
            return sum(self._group_lag(group) for group in self.groups)
        except (KafkaException, psycopg.Error):
            return self.handler_max  # a hiccup: keep the last known figure, the run goes on

    def _group_lag(self, group: str) -> int:
        """Messages of the topic the handler has not handled yet, from its checkpoints in PostgreSQL.

        Both bank handlers keep their positions there (exact, where auto-committed Kafka offsets trail
        by seconds); a partition without a checkpoint yet counts from its start. The relay writes in
        transactions, so each partition ends with a commit marker, which is not a message to handle: a
        handler that has caught up shows 0. (``tidings status`` counts lag exactly, by reading the
        partitions; this is its cheap cousin, sampled every second.)
        """
        assert self._admin is not None
        assert self._reader is not None
        metadata = self._admin.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if metadata is None or metadata.error is not None:
            return 0
        positions = self._checkpoints(group)
        lag = 0
        for partition in metadata.partitions:
            low, high = self._reader.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=10)
            if high > low:
                lag += max(0, high - 1 - positions.get(partition, low))
        return lag

    def _checkpoints(self, group: str) -> dict[int, int]:
        query = sql.SQL("SELECT partition, next_offset FROM {} WHERE handler = %s AND topic = %s").format(
            sql.Identifier(self.store.config.schema, "handler_checkpoints")
        )
        with self.store.connection() as conn:
            return {int(p): int(o) for p, o in conn.execute(query, (group, self.topic))}

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


# --- the processes ------------------------------------------------------------------------------------


class _ProcessFailed(Exception):
    """A relay or worker process the demo started exited on its own."""


@dataclass
class _Process:
    name: str
    args: list[str]
    port: int
    log: IO[bytes]
    popen: subprocess.Popen[bytes] = field(init=False)


class _Fleet:
    """The relay and the workers, as real processes of this interpreter (``python -m workers``)."""

    def __init__(self, env: dict[str, str], partitions: int) -> None:
        self.env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [_checkout(), env.get("PYTHONPATH")]))}
        self.partitions = partitions
        self.logs = devservices.runs.new_run_dir("demo")
        self.processes: list[_Process] = []
        self._workers_started = 0

    def __enter__(self) -> _Fleet:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self, workers: int) -> None:
        relay = ["relay", "--partitions", str(self.partitions)]
        self._spawn("relay", relay)
        for _ in range(workers):
            self._spawn_worker()
        self._wait_ready(self.processes)

    def _spawn_worker(self) -> _Process:
        self._workers_started += 1
        return self._spawn(
            f"worker-{self._workers_started}",
            ["worker", WORKER_APP, "--partitions", str(self.partitions), *FAST_FAILOVER],
        )

    def _spawn(self, name: str, args: list[str]) -> _Process:
        port = devservices.runs.free_port()
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        process = _Process(name, [*args, "--port", str(port), "--host", "127.0.0.1"], port, log)
        process.popen = subprocess.Popen(
            [sys.executable, "-m", "workers", *process.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def kill_and_replace_worker(self, index: int) -> None:
        """kill -9 the ``index``-th running worker and start another in its place, without waiting."""
        workers = [p for p in self.processes if p.name.startswith("worker")]
        victim = workers[index]
        victim.popen.send_signal(signal.SIGKILL)
        victim.popen.wait(30)
        victim.log.close()
        self.processes.remove(victim)
        self._spawn_worker()

    def check(self) -> None:
        for process in self.processes:
            code = process.popen.poll()
            if code is not None:
                raise _ProcessFailed(
                    f"the {process.name} process exited with {code}; its log: {self.logs / process.name}.log"
                )

    def _wait_ready(self, processes: list[_Process]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        waiting = list(processes)
        while waiting:
            self.check()
            waiting = [p for p in waiting if not _ready(p.port)]
            if time.monotonic() > deadline:
                names = ", ".join(p.name for p in waiting)
                raise _ProcessFailed(f"{names} not ready after {READY_TIMEOUT:.0f}s; logs in {self.logs}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM every process (they finish their work in flight), then wait; kill what hangs."""
        for process in self.processes:
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.popen.wait(60)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait(10)
            process.log.close()
        self.processes.clear()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# --- the bank's code -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Bank:
    demo: ModuleType
    workers: ModuleType
    transfers: ModuleType


def _checkout() -> str:
    """The directory holding ``examples/`` (the checkout's root), for the processes' PYTHONPATH."""
    import examples

    return str(Path(next(iter(examples.__path__))).resolve().parent)


def _import_bank() -> _Bank:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        from examples.bank import demo, transfers
        from examples.bank import workers as bank_workers
    except ImportError as exc:
        raise fail(
            f"the demo runs the bank example (examples/bank), which is not importable here ({exc}): "
            "run it from a checkout of tidings (./scripts/demo) or in the bank's image",
            EXIT_USAGE,
        ) from exc
    return _Bank(demo, bank_workers, transfers)


def _groups(app_name: str) -> list[str]:
    """The consumer groups of the bank's handlers (``examples.bank.workers``: ``<app>.<handler>``)."""
    return [f"{app_name}.balances", f"{app_name}.transfers"]


# --- cleaning up -----------------------------------------------------------------------------------


def _drop(config: StoreConfig, bootstrap: str, app_name: str) -> None:
    """Drop the schema, the topics and the consumer groups a fresh run created."""
    with psycopg.connect(config.url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(config.schema)))
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    topics = [topic for topic in admin.list_topics(timeout=10).topics if topic.startswith(f"{app_name}.")]
    for future in admin.delete_topics(topics, operation_timeout=30).values() if topics else []:
        future.result()
    for future in admin.delete_consumer_groups(_groups(app_name), request_timeout=30).values():
        with contextlib.suppress(KafkaException):  # a group that never committed does not exist
            future.result()


# --- printing ------------------------------------------------------------------------------------


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        # Once a task is done its rate stays what it was, not diluted by the time the others take.
        elapsed = task.finished_time or task.elapsed or 0.0
        rate = task.completed / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:>8,.0f}/s", style="progress.data.speed")


def _percentile(samples: list[float], percent: int) -> float | None:
    if not samples:
        return None
    if len(samples) == 1:
        return round(samples[0] * 1000, 1)
    return round(statistics.quantiles(samples, n=100, method="inclusive")[percent - 1] * 1000, 1)


def _print(report: Report, as_json: bool) -> None:
    summary = report.summary()
    if as_json:
        out.print_json(json.dumps(summary))
        return
    table = Table("", "", title="tidings demo: the bank", show_header=False)
    table.add_row("accounts", f"{summary['accounts']:,}")
    table.add_row(
        "transfers",
        f"{summary['transfers_requested']:,} requested: {summary['transfers_completed']:,} completed, "
        f"{summary['transfers_compensated']:,} compensated, {summary['transfers_refused']:,} refused, "
        f"{summary['transfers_unended']:,} not ended",
    )
    table.add_row("time", f"{summary['seconds']:.1f} s, {summary['transfers_per_second']:,.1f} transfers/s")
    table.add_row(
        "latency (requested -> ended)",
        f"p50 {summary['latency_p50_ms']} ms, p99 {summary['latency_p99_ms']} ms",
    )
    table.add_row(
        "relay lag (events)", f"max {summary['relay_lag_max']:,}, at the end {summary['relay_lag_end']:,}"
    )
    table.add_row(
        "handler lag (messages)",
        f"max {summary['handler_lag_max']:,}, at the end {summary['handler_lag_end']:,}",
    )
    table.add_row("workers killed and restarted", str(summary["worker_restarts"]))
    for name, holds in _invariants(report.problems).items():
        table.add_row(name, "[green]holds[/]" if holds else "[red]BROKEN[/]")
    out.print(table)
    for problem in report.problems[:20]:
        out.print(f"[red]x[/] {problem}")
    if len(report.problems) > 20:
        out.print(f"... and {len(report.problems) - 20} more")


def _invariants(problems: list[str]) -> dict[str, bool]:
    return {
        "money conserved": not any(p.startswith("money") for p in problems),
        "every transfer completed or compensated once": not any(p.startswith("transfer") for p in problems),
        "read model equals the aggregates": not any(p.startswith("the read model") for p in problems),
    }
