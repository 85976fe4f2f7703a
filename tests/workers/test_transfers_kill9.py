"""1,000 concurrent transfers while worker processes are killed with kill -9 and restarted: money is
conserved, every transfer ends completed or compensated, and nothing is withdrawn, deposited or refunded
twice (real PostgreSQL, real Kafka, ``tidings worker`` processes)."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
from psycopg import sql

from eventstore import PostgresEventStore, StreamNotFound
from examples.bank.accounts import CloseAccount, Deposit, InsufficientFunds, OpenAccount, RequestTransfer
from examples.bank.events import MoneyDeposited, MoneyWithdrawn, TransferCompleted, TransferFailed
from examples.bank.transfers import bank
from tests.tidings.test_dispatch import MAPPER
from tests.workers.cli_support import WorkerProcess, worker_env
from tests.workers.worker_support import eventually, stack
from tidings import Application
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema

APP = "tests.workers.process_apps:build_bank"
ACCOUNTS = 40
TRANSFERS = 1000
OPENING = Decimal("500.00")


@pytest.mark.slow
def test_kill_9_loop_during_1000_concurrent_transfers_conserves_money_and_ends_every_transfer(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    app = Application(event_store, MAPPER, bank)
    rng = random.Random(7)
    accounts = [uuid.uuid4() for _ in range(ACCOUNTS)]
    for account in accounts:
        app.dispatch(OpenAccount(account, "Ada"))
        app.dispatch(Deposit(account, OPENING))
    closed = accounts[-4:]  # transfers to these are rejected and compensated
    for account in closed:
        app.dispatch(CloseAccount(account))
    open_ = accounts[:-4]

    def request(_: int) -> uuid.UUID | None:
        source, target = rng.sample(open_, 1)[0], rng.choice(accounts)
        if source == target:
            return None
        transfer = uuid.uuid4()
        amount = Decimal(rng.randint(1, 4000)) / 100
        try:
            Application(event_store, MAPPER, bank).dispatch(RequestTransfer(transfer, source, target, amount))
        except InsufficientFunds:
            return None
        return transfer

    with stack(event_store, kafka_namespace, partitions=4, mapper=MAPPER, router=bank) as s:
        env = worker_env(postgres_schema, kafka_namespace, s.app_name)
        args = [APP, "--partitions", "4", "--kafka", "session.timeout.ms=6000"]

        def ended() -> int:
            with event_store.connection() as conn:
                row = conn.execute(
                    sql.SQL("SELECT count(*) FROM {} WHERE stream_id LIKE 'transfer-%'").format(
                        sql.Identifier(event_store.config.schema, "streams")
                    )
                ).fetchone()
            return int(row[0]) if row else 0

        workers = [WorkerProcess(args, env, tmp_path / f"w{i}.log") for i in range(2)]
        try:
            with ThreadPoolExecutor(8) as pool:
                requested = [t for t in pool.map(request, range(TRANSFERS)) if t is not None]
            assert len(requested) > TRANSFERS // 2
            kills_mid_traffic = 0
            for round_ in range(3):
                before = ended()
                # Progress since the last kill, or the end of the traffic: on a fast run every transfer
                # can end before the third kill, and a kill with nothing left to do tests nothing.
                eventually(
                    lambda b=before: ended() >= min(b + 20, len(requested)),
                    timeout=120,
                    what=f"progress before kill {round_}",
                )
                if ended() == len(requested):
                    break
                victim = round_ % 2
                workers[victim].kill()
                kills_mid_traffic += 1
                workers[victim] = WorkerProcess(args, env, tmp_path / f"w{victim}-{round_}.log")
            assert kills_mid_traffic >= 1, "no worker was killed while transfers were still running"
            eventually(lambda: ended() == len(requested), timeout=240, what="every transfer ended")
        finally:
            for worker in workers:
                if worker.process.poll() is None:
                    worker.terminate(timeout=30)

    withdrawals: Counter[uuid.UUID] = Counter()
    credits: Counter[uuid.UUID] = Counter()
    total = Decimal(0)
    for account in accounts:
        balance = Decimal(0)
        for recorded in event_store.read_stream_forward(f"account-{account}", 1, 100_000):
            event = MAPPER.event_of(recorded)
            if isinstance(event, MoneyWithdrawn | MoneyDeposited):
                balance = event.balance
                if event.transfer_id is not None:
                    (withdrawals if isinstance(event, MoneyWithdrawn) else credits)[event.transfer_id] += 1
        total += balance
    assert total == OPENING * ACCOUNTS, "money is conserved"
    assert set(withdrawals) == set(requested)
    assert set(withdrawals.values()) == {1}, "no transfer withdrew twice"
    assert set(credits) == set(requested), "every transfer deposited to its target or refunded its source"
    assert set(credits.values()) == {1}, "and only once"
    endings = Counter(type(_ending(event_store, t)).__name__ for t in requested)
    assert set(endings) <= {"TransferCompleted", "TransferFailed"}
    assert endings["TransferFailed"] > 0, "some transfers went to closed accounts and were compensated"
    for transfer in requested:
        event = _ending(event_store, transfer)
        assert isinstance(event, TransferCompleted) or (
            isinstance(event, TransferFailed) and event.compensated
        )


def _ending(store: PostgresEventStore, transfer: uuid.UUID) -> object | None:
    try:
        recorded = store.read_stream_forward(f"transfer-{transfer}")
    except StreamNotFound:
        return None
    assert len(recorded) == 1, "a transfer ends once"
    return MAPPER.event_of(recorded[0])
