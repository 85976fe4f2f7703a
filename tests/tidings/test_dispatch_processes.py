"""Two processes dispatching conflicting commands to one aggregate: no lost update, ever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

from eventstore import PostgresEventStore
from examples.bank.accounts import BankAccount, OpenAccount, accounts
from examples.bank.events import events
from tests.tidings.avro_support import SCHEMAS
from tidings import Application, EventMapper
from tidings.aggregate import apply_all
from tidings.avro import AvroCodec, SchemaSet
from tidings.pytest_plugin import PostgresSchema

ROOT = Path(__file__).resolve().parents[2]
MAPPER = EventMapper(AvroCodec(events, SchemaSet.load(SCHEMAS)))


def _run_two(
    schema: PostgresSchema,
    account: uuid.UUID,
    each: int,
    retry_attempts: int | str,
    gate: Path,
    threads: int = 1,
) -> list[dict[str, int]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable, "-m", "tests.tidings.dispatcher_process",
        schema.server_url, schema.name, str(account), str(each), str(retry_attempts), str(gate), str(threads),
    ]  # fmt: skip
    processes = [
        subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    # Both start dispatching together, so that they meet each other's appends however slowly each
    # started (a loaded machine could otherwise run one after the other).
    deadline = time.monotonic() + 120
    while len(list(gate.glob("*.ready"))) < 2:
        assert time.monotonic() < deadline, "the dispatcher processes never got ready"
        assert all(p.poll() is None for p in processes), [p.communicate() for p in processes]
        time.sleep(0.01)
    (gate / "go").touch()
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _balance(store: PostgresEventStore, account: uuid.UUID) -> Decimal:
    """The balance replayed from every stored event of the account."""
    recorded = store.read_stream_forward(f"account-{account}", count=2000)
    return apply_all(BankAccount(), [MAPPER.from_recorded(r)[0] for r in recorded]).balance


def test_a_thousand_conflicting_deposits_from_two_processes_all_count(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    app = Application(event_store, MAPPER, accounts)
    account = uuid.uuid4()
    app.dispatch(OpenAccount(account, "Ada"))

    results = _run_two(postgres_schema, account, each=500, retry_attempts=1000, gate=tmp_path)

    assert sum(r["succeeded"] for r in results) == 1000
    assert sum(r["exhausted"] for r in results) == 0
    assert sum(r["retried"] for r in results) > 0, "the processes met each other's appends and retried"
    assert _balance(event_store, account) == Decimal("10.00")
    assert len(event_store.read_stream_forward(f"account-{account}", count=2000)) == 1001


def test_without_retries_some_deposits_give_up_and_those_append_nothing(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    app = Application(event_store, MAPPER, accounts)
    account = uuid.uuid4()
    app.dispatch(OpenAccount(account, "Ada"))

    results = _run_two(postgres_schema, account, each=300, retry_attempts=0, gate=tmp_path)

    succeeded = sum(r["succeeded"] for r in results)
    assert sum(r["exhausted"] for r in results) > 0, "with no retries, conflicts surface as TooManyAttempts"
    assert succeeded + sum(r["exhausted"] for r in results) == 600
    assert _balance(event_store, account) == Decimal("0.01") * succeeded
    assert len(event_store.read_stream_forward(f"account-{account}", count=2000)) == 1 + succeeded


def test_two_processes_of_eight_threads_on_one_aggregate_all_succeed_with_the_default_retries(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    """Within a process the threads take turns (no conflict); the two processes meet in the store,
    and the default retry_attempts, with the pause between conflicts, carries every command through."""
    app = Application(event_store, MAPPER, accounts)
    account = uuid.uuid4()
    app.dispatch(OpenAccount(account, "Ada"))

    results = _run_two(postgres_schema, account, each=25, retry_attempts="default", gate=tmp_path, threads=8)

    assert [r["exhausted"] + r["failed"] for r in results] == [0, 0], results
    assert sum(r["succeeded"] for r in results) == 400
    assert sum(r["retried"] for r in results) > 0, "the processes met each other's appends and retried"
    assert _balance(event_store, account) == Decimal("4.00")
    assert len(event_store.read_stream_forward(f"account-{account}", count=2000)) == 401
