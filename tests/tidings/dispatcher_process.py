"""A process that deposits into one account many times: run by test_dispatch_processes.py.

Usage: python -m tests.tidings.dispatcher_process URL SCHEMA ACCOUNT COUNT RETRY_ATTEMPTS GATE [THREADS]

RETRY_ATTEMPTS "default" keeps the application's default; THREADS (default 1) threads each deposit COUNT
times through the one application.
It writes GATE/<pid>.ready once connected, and starts when GATE/go exists, so that two processes
dispatch at the same time whatever their start-up times. Prints one JSON line: how many deposits
succeeded, how many needed retries, how many ran out of them.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

from eventstore import PostgresEventStore, StoreConfig
from examples.bank.accounts import Deposit, accounts
from examples.bank.events import events
from tests.tidings.avro_support import SCHEMAS
from tidings import Application, EventMapper, TooManyAttempts
from tidings.avro import AvroCodec, SchemaSet


def main(
    url: str, schema: str, account: str, count: int, retry_attempts: str, gate: Path, threads: int
) -> None:
    mapper = EventMapper(AvroCodec(events, SchemaSet.load(SCHEMAS)))
    tally = {"succeeded": 0, "retried": 0, "exhausted": 0, "failed": 0}
    lock = threading.Lock()
    retries = {} if retry_attempts == "default" else {"retry_attempts": int(retry_attempts)}
    with PostgresEventStore(StoreConfig(url, schema, pool_size=threads + 2)) as store:
        app = Application(store, mapper, accounts, middleware=(), **retries)

        def deposit() -> None:
            for _ in range(count):
                try:
                    result = app.dispatch(
                        Deposit(uuid.UUID(account), Decimal("0.01")), returning="execution_result"
                    )
                    outcome = "retried" if result.attempts > 1 else None
                except TooManyAttempts:
                    outcome = "exhausted"
                except Exception:  # noqa: BLE001 - counted: the test expects none
                    outcome = "failed"
                with lock:
                    if outcome in (None, "retried"):
                        tally["succeeded"] += 1
                    if outcome is not None:
                        tally[outcome] += 1

        (gate / f"{os.getpid()}.ready").touch()
        deadline = time.monotonic() + 120
        while not (gate / "go").exists():
            if time.monotonic() > deadline:
                raise SystemExit("no go from the test within 120 s")
            time.sleep(0.005)
        workers = [threading.Thread(target=deposit) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    print(json.dumps(tally))


if __name__ == "__main__":
    threads = int(sys.argv[7]) if len(sys.argv) > 7 else 1
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], Path(sys.argv[6]), threads)
