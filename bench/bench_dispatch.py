"""Command dispatch (``Application.dispatch``) against the bare event store appending the same events.

The bank's ``BankAccount`` aggregate and its router (``examples/bank/accounts.py``), the Avro codec over
``schemas/``. Every timed run has a fresh schema of its own (in the first two cases, each side's run),
migrated, with the store's own sequencer numbering the events meanwhile as usual, dropped afterwards.
tidings runs with ``middleware=()`` (what the dispatcher always adds: ``ExtractIdentity``, and
``ConsistencyGuarantee``, idle for eventual consistency) and a cache.

- One aggregate, serial: one thread deposits into one open account, ``Deposit`` after ``Deposit``,
  through ``app.dispatch`` (the aggregate stays cached), by default (each command on its caller's
  thread) and with ``command_threads=16`` (each command handed to a thread, so that its caller can
  leave at the timeout whatever the aggregate does). The reference is the same appends through the
  bare store API: the caller keeps the stream id, the version and the balance, builds the same
  ``MoneyDeposited`` (``datetime.now`` as ``Deposit`` does) and appends
  ``mapper.to_event_data(event, causation_id=..., correlation_id=...)`` with the version it expects,
  ``store.append_to_stream(stream, version, [record])``. The rows written are the same: the same Avro
  body, metadata and schema id, a fresh event id, and a causation and a correlation id (fresh ids, as
  dispatch gives each command), so what tidings adds is the dispatch: routing, the pipeline, the cache,
  ``execute`` and ``apply``. Each side makes its own command or event inside the timed loop.
- 1,000 aggregates, 8 threads: 1,000 accounts opened beforehand (untimed, and cached), each thread
  depositing round-robin over its 125; the reference does the same through bare appends, each thread
  tracking its accounts' versions and balances. One ``Application`` serves all threads, as in a service.

Throughput is measured over ``BENCH_DISPATCH_SECONDS`` (default 4) after half a second of warm-up,
once per ``repeat``, the two sides one after the other, who goes first alternating. The issue's target
for both: dispatch overhead over the bare append below 25%, i.e. dispatch at 0.8 or more of the bare
append's events/s.

- One aggregate, 16 threads: one ``Application`` and 16 threads depositing into one account, every
  failed dispatch counted (the target is none: commands to one aggregate wait for each other). The
  reference is one thread appending to one stream through the bare store, the most a stream can take.
- Cold load: accounts whose streams hold 1,000 events (an opening and 999 deposits, appended straight
  to the store in one batch, as ``tests/tidings/test_snapshots.py`` builds them), ``LONG_STREAMS`` of
  them per side and run, so that every timed command really loads a stream nobody has loaded yet. One
  ``Deposit`` each, timed one by one, through applications with ``AggregateCache(max_aggregates=0)``:
  without snapshots (all 1,000 events read, decoded and applied), and with a snapshot at the stream's
  latest version planted beforehand (``Snapshotting.record``, as a dispatch would write it; the
  snapshot is read, then the events after it, none). Beside them, an application with a cache warmed by
  one untimed dispatch just before (the cached path, for scale). The reference: what a hand-written
  loader pays at least: the stream's events read in one ``read_stream_forward`` call, the balance taken
  from the last one, and the bare append; informational, a loader that decodes and applies every event
  through the same mapper and aggregate before appending. All the variants take their turn on stream
  i before any moves to stream i + 1, the order rotating, in one schema per run; the sequencer has
  numbered the built streams before anything is timed.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
from psycopg import sql
from rich.console import Console

from bench.results import Row
from eventstore import PostgresEventStore, StoreConfig, migrate
from examples.bank.accounts import BankAccount, Deposit, OpenAccount, accounts
from examples.bank.events import AccountOpened, MoneyDeposited, events
from tidings import AggregateCache, Application, DispatchError, EventMapper, devservices
from tidings.avro import AvroCodec, SchemaSet
from tidings.snapshotting import Snapshotting

NAME = "dispatch"

SECONDS = float(os.environ.get("BENCH_DISPATCH_SECONDS", "4"))
WARMUP_SECONDS = 0.5
WRITERS = 8
CONTENDERS = 16
ACCOUNTS = 1000
LONG_STREAMS = 50
LONG_EVENTS = 1000
# Larger than any stream here: the reference's loader reads a whole stream in one call.
READ_ALL = 10 * LONG_EVENTS

TARGET = 0.8  # the issue's: dispatch overhead over the bare append below 25%

ROOT = Path(__file__).resolve().parents[1]
MAPPER = EventMapper(AvroCodec(events, SchemaSet.load(ROOT / "schemas")))
AMOUNT = Decimal("1.00")
CENT = Decimal("0.01")
OPENED_AT = datetime(2026, 1, 1, tzinfo=UTC)
# The balance of a built long stream: 999 deposits of 0.01 after the opening.
LONG_BALANCE = CENT * (LONG_EVENTS - 1)
SNAPSHOTTING = Snapshotting(every=LONG_EVENTS, version=1)


def stream_of(account: UUID) -> str:
    return f"account-{account}"


@contextmanager
def fresh_store(url: str, writers: int = 1) -> Iterator[PostgresEventStore]:
    """A store in a migrated schema of its own, its sequencer running; the schema is dropped at the end."""
    # One session per writer, one for the sequencer, one spare.
    config = StoreConfig(url, f"bench_dispatch_{uuid4().hex[:8]}", pool_size=writers + 2)
    migrate(config)
    try:
        with PostgresEventStore(config) as store:
            yield store
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(config.schema)))


# --- cached aggregates: dispatch against bare appends -------------------------------------------------


class Side(ABC):
    """One way of depositing into open accounts; the constructor opens them (untimed)."""

    name: str

    @abstractmethod
    def deposit(self, account: UUID) -> None:
        """Deposit ``AMOUNT`` into ``account``: one event appended."""


class Dispatch(Side):
    name = "tidings"
    command_threads = 0  # the default: each command on its caller's thread

    def __init__(self, store: PostgresEventStore, opened: list[UUID]) -> None:
        self.app = Application(
            store,
            MAPPER,
            accounts,
            middleware=(),
            cache=AggregateCache(),
            command_threads=self.command_threads,
        )
        for account in opened:
            self.app.dispatch(OpenAccount(account, "Ada", at=OPENED_AT))

    def deposit(self, account: UUID) -> None:
        self.app.dispatch(Deposit(account, AMOUNT))


class ThreadedDispatch(Dispatch):
    name = "tidings, command_threads=16"
    command_threads = 16  # each command handed to a thread, so that its caller can leave at the timeout


class BareAppend(Side):
    name = "bare append_to_stream"

    def __init__(self, store: PostgresEventStore, opened: list[UUID]) -> None:
        self.store = store
        # Per account: its stream id, version and balance. Each thread has accounts of its own.
        self.accounts: dict[UUID, tuple[str, int, Decimal]] = {}
        for account in opened:
            stream = stream_of(account)
            opening = AccountOpened(account, "Ada", "EUR", OPENED_AT, Decimal("0.00"))
            version = store.append_to_stream(
                stream, 0, [MAPPER.to_event_data(opening, causation_id=uuid4(), correlation_id=uuid4())]
            )
            self.accounts[account] = (stream, version, Decimal("0.00"))

    def deposit(self, account: UUID) -> None:
        stream, version, balance = self.accounts[account]
        balance += AMOUNT
        event = MoneyDeposited(account, AMOUNT, balance, datetime.now(UTC))
        record = MAPPER.to_event_data(event, causation_id=uuid4(), correlation_id=uuid4())
        self.accounts[account] = (stream, self.store.append_to_stream(stream, version, [record]), balance)


SIDES: tuple[type[Dispatch] | type[BareAppend], ...] = (Dispatch, ThreadedDispatch, BareAppend)


def events_per_second(side: Side, shares: list[list[UUID]], seconds: float) -> float:
    """One thread per share, each depositing round-robin over its accounts; events/s over ``seconds``."""
    counts = [0] * len(shares)
    stop = threading.Event()

    def work(index: int) -> None:
        share, done = shares[index], 0
        while not stop.is_set():
            side.deposit(share[done % len(share)])
            done += 1
            counts[index] = done

    with ThreadPoolExecutor(len(shares)) as pool:
        futures = [pool.submit(work, index) for index in range(len(shares))]
        try:
            time.sleep(WARMUP_SECONDS)
            before, started = sum(counts), time.perf_counter()
            time.sleep(seconds)
            appended, elapsed = sum(counts) - before, time.perf_counter() - started
        finally:
            stop.set()
            for future in futures:
                future.result()  # a writer's exception fails the run rather than lowering its number
    return appended / elapsed


def cached_case(url: str, repeat: int, seconds: float, case: str, accounts_: int, writers: int) -> list[Row]:
    """One row per way of dispatching (on command threads, and on the caller's), each against the bare
    appends measured in the same runs."""
    runs: dict[str, list[float]] = defaultdict(list)
    for index in range(repeat):
        # Who goes first rotates, so that drift on a shared machine hurts every side alike.
        shift = index % len(SIDES)
        for side_class in SIDES[shift:] + SIDES[:shift]:
            opened = [uuid4() for _ in range(accounts_)]
            shares = [opened[w::writers] for w in range(writers)]
            with fresh_store(url, writers) as store:
                side = side_class(store, opened)
                runs[side.name].append(events_per_second(side, shares, seconds))
    reference = statistics.median(runs[BareAppend.name])
    rows = []
    for ours_class in (Dispatch, ThreadedDispatch):
        ours = statistics.median(runs[ours_class.name])
        params = {
            "writers": writers,
            "accounts": accounts_,
            "events_per_command": 1,
            "seconds": seconds,
            "repeat": repeat,
            "runs": {name: runs[name] for name in (ours_class.name, BareAppend.name)},
            "per_run_ratio": [
                round(a / b, 3) for a, b in zip(runs[ours_class.name], runs[BareAppend.name], strict=True)
            ],
            "middleware": "() (ExtractIdentity only)",
            "command_threads": ours_class.command_threads,
            "target": f"dispatch >= {TARGET} of the bare append (overhead < 25%)",
        }
        label = "" if ours_class is Dispatch else ", command_threads=16"
        rows.append(
            Row(
                NAME,
                f"{case}{label}",
                "throughput",
                "events/s",
                ours,
                "bare append_to_stream, same encoded events",
                reference,
                ours / reference,
                params,
            )
        )
    return rows


# --- contention: many threads, one aggregate ----------------------------------------------------------


def contention_case(url: str, repeat: int, seconds: float) -> Row:
    """``CONTENDERS`` threads depositing into one account through one application, against one thread
    appending to one stream through the bare store: one stream takes one append at a time, so the
    serial bare append is the most one aggregate can take. Every failed dispatch is counted."""
    runs: dict[str, list[float]] = defaultdict(list)
    failures: list[int] = []
    for index in range(repeat):
        for side_class in ((Dispatch, BareAppend), (BareAppend, Dispatch))[index % 2]:
            account = uuid4()
            with fresh_store(url, CONTENDERS) as store:
                side = side_class(store, [account])
                if isinstance(side, Dispatch):
                    failed = [0]
                    shares = [[account]] * CONTENDERS
                    runs[side.name].append(events_per_second(Counting(side, failed), shares, seconds))
                    failures.append(failed[0])
                else:
                    runs[side.name].append(events_per_second(side, [[account]], seconds))
    ours = statistics.median(runs[Dispatch.name])
    reference = statistics.median(runs[BareAppend.name])
    params = {
        "writers": CONTENDERS,
        "reference_writers": 1,
        "accounts": 1,
        "seconds": seconds,
        "repeat": repeat,
        "runs": dict(runs),
        "failed_dispatches": failures,
        "target": "no failed dispatch (TooManyAttempts, ExecutionTimeout)",
    }
    return Row(
        NAME,
        f"one aggregate, {CONTENDERS} threads (cached)",
        "throughput",
        "events/s",
        ours,
        "bare append_to_stream, 1 thread, one stream",
        reference,
        ours / reference,
        params,
    )


class Counting(Side):
    """A side whose failures are counted instead of ending the run."""

    def __init__(self, side: Side, failed: list[int]) -> None:
        self.side, self.failed, self.name = side, failed, side.name

    def deposit(self, account: UUID) -> None:
        try:
            self.side.deposit(account)
        except DispatchError:
            self.failed[0] += 1


# --- cold loads of long streams ---------------------------------------------------------------------


def build_long_stream(store: PostgresEventStore) -> UUID:
    """An account whose stream holds ``LONG_EVENTS`` events, appended straight to the store at once."""
    account = uuid4()
    history: list[object] = [AccountOpened(account, "Ada", "EUR", OPENED_AT, Decimal("0.00"))]
    history += [MoneyDeposited(account, CENT, CENT * n, OPENED_AT) for n in range(1, LONG_EVENTS)]
    store.append_to_stream(stream_of(account), 0, [MAPPER.to_event_data(event) for event in history])
    return account


def bare_deposit(store: PostgresEventStore, account: UUID, version: int, balance: Decimal) -> None:
    event = MoneyDeposited(account, AMOUNT, balance + AMOUNT, datetime.now(UTC))
    record = MAPPER.to_event_data(event, causation_id=uuid4(), correlation_id=uuid4())
    store.append_to_stream(stream_of(account), version, [record])


def read_and_append(store: PostgresEventStore, account: UUID) -> None:
    """The least a hand-written loader pays: the events read in one call, the last one decoded."""
    recorded = store.read_stream_forward(stream_of(account), 1, READ_ALL)
    last, _ = MAPPER.from_recorded(recorded[-1])
    assert isinstance(last, MoneyDeposited)
    bare_deposit(store, account, recorded[-1].stream_version, last.balance)


def replay_and_append(store: PostgresEventStore, account: UUID) -> None:
    """A hand-written loader that rebuilds the state: every event decoded and applied."""
    recorded = store.read_stream_forward(stream_of(account), 1, READ_ALL)
    state = BankAccount()
    for event in recorded:
        state = state.apply(MAPPER.from_recorded(event)[0])
    bare_deposit(store, account, recorded[-1].stream_version, state.balance)


COLD = "tidings, cold, no snapshot"
SNAPSHOT = "tidings, cold, snapshot at the latest version"
CACHED = "tidings, cached"
READ = "read_stream_forward + bare append"
REPLAY = "read_stream_forward + decode and apply each + bare append"


def cold_run(url: str, index: int) -> dict[str, list[float]]:
    """Seconds per command of every variant, one command per stream, ``LONG_STREAMS`` streams each."""
    with fresh_store(url) as store:
        # Each variant a stream set of its own; the cached variant uses the snapshot variant's after it.
        sets = {
            name: [build_long_stream(store) for _ in range(LONG_STREAMS)]
            for name in (COLD, SNAPSHOT, READ, REPLAY)
        }
        for account in sets[SNAPSHOT]:
            SNAPSHOTTING.record(store, BankAccount(account, LONG_BALANCE), stream_of(account), LONG_EVENTS)
        store.sequencer.catch_up()

        def uncached(**options: Any) -> Application:
            return Application(
                store, MAPPER, accounts, middleware=(), cache=AggregateCache(max_aggregates=0), **options
            )

        cold = uncached()
        snapshotted = uncached(snapshotting={BankAccount: SNAPSHOTTING})
        cached = Application(
            store,
            MAPPER,
            accounts,
            middleware=(),
            cache=AggregateCache(),
            snapshotting={BankAccount: SNAPSHOTTING},
        )
        balances: dict[str, list[Decimal]] = defaultdict(list)

        def dispatching(app: Application, name: str) -> Callable[[UUID], None]:
            def one(account: UUID) -> None:
                balances[name].append(
                    app.dispatch(Deposit(account, AMOUNT), returning="aggregate_state").balance
                )

            return one

        variants: list[tuple[str, Callable[[UUID], None]]] = [
            (COLD, dispatching(cold, COLD)),
            (SNAPSHOT, dispatching(snapshotted, SNAPSHOT)),
            (READ, lambda account: read_and_append(store, account)),
            (REPLAY, lambda account: replay_and_append(store, account)),
        ]
        seconds: dict[str, list[float]] = defaultdict(list)
        for i in range(LONG_STREAMS):
            turn = (index + i) % len(variants)
            for name, one in variants[turn:] + variants[:turn]:
                account = sets[name][i]
                started = time.perf_counter()
                one(account)
                seconds[name].append(time.perf_counter() - started)
            # The cached path on the snapshot variant's stream: loaded by one untimed dispatch, then timed.
            account = sets[SNAPSHOT][i]
            cached.dispatch(Deposit(account, AMOUNT))
            started = time.perf_counter()
            cached.dispatch(Deposit(account, AMOUNT))
            seconds[CACHED].append(time.perf_counter() - started)
        # Every cold load saw the whole history (or its snapshot): 9.99 + 1.00.
        for name in (COLD, SNAPSHOT):
            assert balances[name] == [LONG_BALANCE + AMOUNT] * LONG_STREAMS, f"{name}: {set(balances[name])}"
        # One command each; the snapshot variant's streams also took the cached variant's two.
        for name, commands in ((COLD, 1), (SNAPSHOT, 3), (READ, 1), (REPLAY, 1)):
            versions = {store.stream_info(stream_of(account)).stream_version for account in sets[name]}
            assert versions == {LONG_EVENTS + commands}, f"{name}: stream versions {versions}"
    return seconds


def cold_case(url: str, repeat: int) -> list[Row]:
    samples: dict[str, list[float]] = defaultdict(list)
    per_run: dict[str, list[float]] = defaultdict(list)
    for index in range(repeat):
        for name, seconds in cold_run(url, index).items():
            samples[name] += seconds
            per_run[name].append(round(len(seconds) / sum(seconds), 2))

    def rate(name: str) -> float:
        return len(samples[name]) / sum(samples[name])

    params = {
        "streams_per_variant_and_run": LONG_STREAMS,
        "events_per_stream": LONG_EVENTS,
        "repeat": repeat,
        "ms_per_command_p50": {name: round(1000 * statistics.median(s), 3) for name, s in samples.items()},
        "ms_per_command_mean": {name: round(1000 * statistics.fmean(s), 3) for name, s in samples.items()},
        "commands_per_s_per_run": dict(per_run),
        "middleware": "() (ExtractIdentity only)",
        "snapshotting": {"every": SNAPSHOTTING.every, "version": SNAPSHOTTING.version},
    }
    case = f"one Deposit to an uncached account, {LONG_EVENTS:,}-event stream"
    metric, unit = "throughput", "commands/s"
    read, replay = rate(READ), rate(REPLAY)
    rows = [
        Row(NAME, f"{case}, no snapshot", metric, unit, rate(COLD), READ, read, rate(COLD) / read, params),
        Row(
            NAME,
            f"{case}, no snapshot (informational)",
            metric,
            unit,
            rate(COLD),
            REPLAY,
            replay,
            rate(COLD) / replay,
            params,
        ),
        Row(
            NAME,
            f"{case}, snapshot at the latest version",
            metric,
            unit,
            rate(SNAPSHOT),
            READ,
            read,
            rate(SNAPSHOT) / read,
            params,
        ),
        Row(
            NAME,
            f"{case}, cached instead",
            metric,
            unit,
            rate(CACHED),
            READ,
            read,
            rate(CACHED) / read,
            params,
        ),
    ]
    return rows


def verdicts(rows: list[Row]) -> list[str]:
    """The issue's target, met or not, for the cases it names."""
    lines = [
        f"{row.case}: dispatch at {row.ratio:.2f} of the bare append (target >= {TARGET}, overhead < 25%): "
        f"{'met' if row.ratio >= TARGET else 'NOT met'}"
        for row in rows
        if "target" in row.params and "failed_dispatches" not in row.params
    ]
    lines += [
        f"{row.case}: {sum(row.params['failed_dispatches'])} failed dispatches (target 0): "
        f"{'met' if not sum(row.params['failed_dispatches']) else 'NOT met'}"
        for row in rows
        if "failed_dispatches" in row.params
    ]
    return lines


def run(repeat: int = 1) -> list[Row]:
    with devservices.postgres() as postgres:
        url = postgres.address
        rows = [
            *cached_case(url, repeat, SECONDS, "one aggregate, serial (cached)", 1, 1),
            *cached_case(
                url,
                repeat,
                SECONDS,
                f"{ACCOUNTS:,} aggregates, {WRITERS} threads (cached)",
                ACCOUNTS,
                WRITERS,
            ),
            contention_case(url, repeat, SECONDS),
            *cold_case(url, repeat),
        ]
    console = Console(width=120)
    for line in verdicts(rows):
        console.print(line)
    return rows
