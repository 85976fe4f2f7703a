"""Tenants: one `tidings worker --tenant a --tenant b` runs the bank's handlers once per tenant, each on
its own schema, topics and groups; no event, checkpoint or metric crosses between them."""

from __future__ import annotations

import os
import urllib.request
import uuid
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg import sql

from eventstore import PostgresEventStore, StoreConfig, migrate
from eventstore.relay import Relay, RelayConfig
from examples.bank.accounts import Deposit, OpenAccount
from examples.bank.transfers import bank
from examples.bank.workers import mapper
from tests.workers.cli_support import WorkerProcess, rows, tidings
from tests.workers.worker_support import eventually
from tidings import Application
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema

APP = "examples.bank.workers:build"


def handled(worker: WorkerProcess, handler: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if (
                line.startswith("tidings_handler_events_total{")
                and f'handler="{handler}"' in line
                and 'outcome="handled"' in line
            ):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_two_tenants_share_a_worker_and_nothing_else(
    postgres_schema: PostgresSchema, kafka_namespace: KafkaNamespace, tmp_path: Path
) -> None:
    url, base = postgres_schema.server_url, postgres_schema.name
    app = f"bank{uuid.uuid4().hex[:6]}"
    tenants = {"a": StoreConfig(url, f"{base}_a"), "b": StoreConfig(url, f"{base}_b")}
    stores = {name: PostgresEventStore(config) for name, config in tenants.items()}
    relays: list[Relay] = []
    try:
        accounts: dict[str, list[uuid.UUID]] = {}
        for name, store in stores.items():
            migrate(tenants[name])
            bank_app = Application(store, mapper(), bank)
            accounts[name] = [uuid.uuid4() for _ in range(3 if name == "a" else 2)]
            for account in accounts[name]:
                bank_app.dispatch(OpenAccount(account, f"{name} customer"))
                bank_app.dispatch(Deposit(account, Decimal("10.00")))
            relay = Relay(
                store, RelayConfig(kafka_namespace.bootstrap_servers, app=f"{name}.{app}", partitions=2)
            )
            relays.append(relay)
            relay.start()
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_namespace.bootstrap_servers,
            "TIDINGS_APP": app,
        }
        args = [APP, "--schema", base, "--tenant", "a", "--tenant", "b", "--partitions", "2"]
        with WorkerProcess(args, env, tmp_path / "worker.log") as worker:
            eventually(worker.ready, what="the worker ready")
            for name in tenants:
                eventually(
                    lambda name=name: (
                        len(rows(url, f"{base}_{name}", "bank_balances")) == len(accounts[name])
                    ),
                    what=f"tenant {name}'s read model",
                )
            handlers = {h["handler"] for h in worker.readiness()[1]["handlers"]}
            assert handlers == {f"{t}.{app}.{h}" for t in tenants for h in ("balances", "transfers")}
            for name in stores:
                # The tenant's read model holds its accounts only, with their balances.
                balances = dict(rows(url, f"{base}_{name}", "bank_balances", "account_id, balance"))
                assert balances == dict.fromkeys(accounts[name], Decimal("10.00"))
                # Its checkpoints are its handlers' only.
                checkpointed = {
                    h for (h,) in rows(url, f"{base}_{name}", "handler_checkpoints", "DISTINCT handler")
                }
                assert checkpointed == {f"{name}.{app}.balances", f"{name}.{app}.transfers"}
                # Its metrics count its events only: 2 per account (opened, deposited).
                eventually(
                    lambda name=name: handled(worker, f"{name}.{app}.balances") == 2 * len(accounts[name]),
                    what=f"tenant {name}'s metrics",
                )
            status = tidings("status", "--schema", f"{base}_a", "--app-name", f"a.{app}", "--json", env=env)
            assert status.returncode == 0, status.stderr
            assert f"b.{app}" not in status.stdout
            assert worker.terminate() == 0

        refused = tidings("worker", APP, "--schema", base, "--tenant", "Bad-Name", env=env)
        assert refused.returncode == 2
        assert "a tenant's name must be" in refused.stderr
    finally:
        for relay in relays:
            relay.stop()
        for store in stores.values():
            store.close()
        with psycopg.connect(url, autocommit=True) as conn:
            for config in tenants.values():
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(config.schema))
                )
