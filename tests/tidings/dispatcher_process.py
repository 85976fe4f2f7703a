"""A process that deposits into one account many times: run by test_dispatch_processes.py.

Usage: python -m tests.tidings.dispatcher_process URL SCHEMA ACCOUNT COUNT RETRY_ATTEMPTS GATE
It writes GATE/<pid>.ready once connected, and starts when GATE/go exists, so that two processes
dispatch at the same time whatever their start-up times. Prints one JSON line: how many deposits
succeeded, how many needed retries, how many ran out of them.
"""

from __future__ import annotations

import json
import os
import sys
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


def main(url: str, schema: str, account: str, count: int, retry_attempts: int, gate: Path) -> None:
    mapper = EventMapper(AvroCodec(events, SchemaSet.load(SCHEMAS)))
    succeeded = retried = exhausted = 0
    with PostgresEventStore(StoreConfig(url, schema)) as store:
        app = Application(store, mapper, accounts, middleware=(), retry_attempts=retry_attempts, timeout=60)
        (gate / f"{os.getpid()}.ready").touch()
        deadline = time.monotonic() + 120
        while not (gate / "go").exists():
            if time.monotonic() > deadline:
                raise SystemExit("no go from the test within 120 s")
            time.sleep(0.005)
        for _ in range(count):
            try:
                result = app.dispatch(
                    Deposit(uuid.UUID(account), Decimal("0.01")), returning="execution_result"
                )
            except TooManyAttempts:
                exhausted += 1
                continue
            succeeded += 1
            retried += result.attempts > 1
    print(json.dumps({"succeeded": succeeded, "retried": retried, "exhausted": exhausted}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), Path(sys.argv[6]))
