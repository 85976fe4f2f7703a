"""`tidings demo`: its plan and invariant checks (pure), and whole runs on the real services, one with a
worker killed midway."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from hypothesis import given
from hypothesis import strategies as st

from examples.bank.demo import INITIAL_DEPOSIT, Facts, Plan, Settlement, plan, verify
from tests.support import tidings_script
from tests.workers.cli_support import tidings
from tidings import devservices
from tidings.pytest_plugin import PostgresSchema

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 23, tzinfo=UTC)


# --- the plan ----------------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_plan() -> None:
    assert plan(10, 50, seed=7) == plan(10, 50, seed=7)
    assert plan(10, 50, seed=7) != plan(10, 50, seed=8)


@given(st.integers(2, 60), st.integers(0, 300), st.integers(0, 2**32))
def test_every_plan_is_one_the_bank_can_run(accounts: int, transfers: int, seed: int) -> None:
    p = plan(accounts, transfers, seed)
    assert len(p.open_accounts) == accounts
    assert len(p.transfers) == transfers
    assert len({*p.open_accounts, *p.closed_accounts, *p.unknown_accounts}) == (
        len(p.open_accounts) + len(p.closed_accounts) + len(p.unknown_accounts)
    )
    assert len({t.transfer_id for t in p.transfers}) == transfers
    pools = {"open": p.open_accounts, "closed": p.closed_accounts, "unknown": p.unknown_accounts}
    for t in p.transfers:
        assert t.source in p.open_accounts
        assert t.target != t.source
        assert t.target in pools[t.target_kind]
        assert Decimal("1.00") <= t.amount <= Decimal("20.00")


def test_a_plan_needs_two_accounts() -> None:
    with pytest.raises(ValueError, match="at least 2 accounts"):
        plan(1, 10)


# --- the invariants ------------------------------------------------------------------------------------


def outcome_of(p: Plan) -> Facts:
    """The facts of a correct run of ``p``: what the bank does with each transfer, computed by hand."""
    balances = dict.fromkeys(p.open_accounts, INITIAL_DEPOSIT) | dict.fromkeys(p.closed_accounts, Decimal(0))
    deposits: dict[uuid.UUID, list[tuple[uuid.UUID, Decimal]]] = {}
    settlements: dict[uuid.UUID, list[Settlement]] = {}
    for t in p.transfers:
        balances[t.source] -= t.amount
        completed = t.target_kind == "open"
        receiver = t.target if completed else t.source
        balances[receiver] += t.amount
        deposits[t.transfer_id] = [(receiver, t.amount)]
        end = Settlement("completed" if completed else "failed", T0, T0 + timedelta(seconds=1))
        settlements[t.transfer_id] = [end]
    return Facts(balances, deposits, settlements, dict(balances))


@given(st.integers(2, 40), st.integers(0, 200), st.integers(0, 2**32))
def test_a_correct_run_breaks_no_invariant(accounts: int, transfers: int, seed: int) -> None:
    p = plan(accounts, transfers, seed)
    assert verify(p, outcome_of(p)) == []


@given(st.integers(0, 2**32), st.data())
def test_a_cent_astray_anywhere_is_found(seed: int, data: st.DataObject) -> None:
    p = plan(10, 40, seed)
    facts = outcome_of(p)
    account = data.draw(st.sampled_from(p.accounts))
    facts.balances[account] += Decimal("0.01")
    problems = verify(p, facts)
    assert any(problem.startswith("money is not conserved") for problem in problems)
    # The read model now disagrees with that account's events too.
    assert any(str(account) in problem and problem.startswith("the read model") for problem in problems)


def test_each_broken_promise_about_a_transfer_is_named() -> None:
    p = plan(10, 60, seed=3)
    completed = next(t for t in p.transfers if t.target_kind == "open")
    failed = next(t for t in p.transfers if t.target_kind != "open")

    def broken(change: Any) -> list[str]:
        facts = outcome_of(p)
        change(facts)
        return verify(p, facts)

    assert broken(lambda f: f.settlements.pop(completed.transfer_id)) == [
        f"transfer {completed.transfer_id} (open target) never ended"
    ]
    twice = [Settlement("completed", T0, T0), Settlement("completed", T0, T0)]
    assert broken(lambda f: f.settlements.__setitem__(completed.transfer_id, twice)) == [
        f"transfer {completed.transfer_id} (open target) ended 2 times"
    ]
    assert broken(
        lambda f: f.transfer_deposits[completed.transfer_id].append((completed.source, completed.amount))
    ) == [
        f"transfer {completed.transfer_id} (open target) completed with deposits [{completed.amount}] "
        f"and refunds [{completed.amount}]"
    ]
    assert broken(lambda f: f.transfer_deposits.pop(failed.transfer_id)) == [
        f"transfer {failed.transfer_id} ({failed.target_kind} target) failed with refunds [] and deposits []"
    ]
    wrong_end = [replace(outcome_of(p).settlements[failed.transfer_id][0], outcome="completed")]

    def completed_into_nowhere(facts: Facts) -> None:
        facts.settlements[failed.transfer_id] = wrong_end
        facts.transfer_deposits[failed.transfer_id] = [(failed.target, failed.amount)]

    assert broken(completed_into_nowhere) == [
        f"transfer {failed.transfer_id} ({failed.target_kind} target) completed into an account that "
        "cannot take money"
    ]


def test_a_transfer_the_source_refused_is_not_expected_to_end() -> None:
    p = plan(5, 10, seed=1)
    facts = outcome_of(p)
    (first, *_) = p.transfers
    facts.settlements.pop(first.transfer_id)
    assert verify(p, facts) != []
    # Refused at the request, the money never left: put it back as the bank would have kept it.
    facts.transfer_deposits.pop(first.transfer_id)
    receiver = first.target if first.target_kind == "open" else first.source
    facts.balances[receiver] -= first.amount
    facts.balances[first.source] += first.amount
    facts.read_model.update(facts.balances)
    assert verify(p, facts, refused=[first.transfer_id]) == []


# --- whole runs ----------------------------------------------------------------------------------------


def run_demo(*args: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    if cwd == ROOT:
        return tidings("demo", *args, env=env, timeout=400)
    # Elsewhere: outside the checkout, where examples/ is not importable.
    command = [tidings_script(), "demo", *args]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def services_env(postgres_service: devservices.Service, kafka_service: devservices.Service) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": postgres_service.address,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_service.address,
    }


def demo_leftovers(env: dict[str, str]) -> tuple[list[str], list[str]]:
    """Schemas and topics a demo run could have left behind (demo_* / demo-*)."""
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        schemas = [
            row[0] for row in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'demo\\_%'")
        ]
    admin = AdminClient({"bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"]})
    topics = [topic for topic in admin.list_topics(timeout=10).topics if topic.startswith("demo-")]
    return schemas, topics


def test_the_demo_runs_the_bank_and_its_invariants_hold(services_env: dict[str, str]) -> None:
    before = demo_leftovers(services_env)
    result = run_demo("--accounts", "12", "--transfers", "120", "--rate", "0", "--json", env=services_env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["ok"] is True
    assert summary["problems"] == []
    assert summary["transfers_requested"] == 120
    assert summary["transfers_unended"] == 0
    assert (
        summary["transfers_completed"] + summary["transfers_compensated"] + summary["transfers_refused"]
        == 120
    )
    assert summary["transfers_compensated"] > 0  # the closed and unknown targets were exercised
    assert summary["relay_lag_end"] == 0
    assert summary["handler_lag_end"] == 0
    assert summary["latency_p50_ms"] <= summary["latency_p99_ms"]
    assert "relay and 2 workers ready" in result.stderr
    # A fresh run drops what it made.
    assert demo_leftovers(services_env) == before


def test_a_worker_killed_midway_loses_nothing(services_env: dict[str, str]) -> None:
    result = run_demo(
        "--accounts", "12", "--transfers", "200", "--rate", "50", "--kill-worker", "--json", env=services_env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["worker_restarts"] == 1
    assert summary["ok"] is True, summary["problems"]
    assert summary["transfers_unended"] == 0


def test_beside_running_workers_the_demo_only_dispatches_and_checks(
    services_env: dict[str, str], postgres_schema: PostgresSchema, tmp_path: Path
) -> None:
    """As in docker-compose.yml: the relay and the worker are services of their own, and stay."""
    schema, app = f"{postgres_schema.name}_bank", f"bank-{uuid.uuid4().hex[:8]}"
    env = {**services_env, "TIDINGS_SCHEMA": schema, "TIDINGS_APP": app, "TIDINGS_LOG_FORMAT": "json"}
    assert subprocess.run([tidings_script(), "migrate"], env=env, check=False, timeout=120).returncode == 0
    log = (tmp_path / "processes.log").open("wb")
    relay = subprocess.Popen(
        [tidings_script(), "relay", "--partitions", "2"], env=env, stdout=log, stderr=log
    )
    worker = subprocess.Popen(
        [tidings_script(), "worker", "examples.bank.workers:build", "--port", "0", "--host", "127.0.0.1"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=log,
    )
    try:
        args = (
            "--no-start-processes",
            "--schema",
            schema,
            "--app",
            app,
            "--accounts",
            "6",
            "--transfers",
            "40",
        )
        result = run_demo(*args, "--rate", "0", "--json", env=services_env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads(result.stdout)["ok"] is True
        assert relay.poll() is None
        assert worker.poll() is None
        # A named schema is the operator's: the demo keeps it.
        with psycopg.connect(services_env["DATABASE_URL"]) as conn:
            assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    finally:
        for process in (worker, relay):
            process.terminate()
            process.wait(60)
        log.close()
        with psycopg.connect(services_env["DATABASE_URL"], autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(psycopg.sql.Identifier(schema))
            )
        admin = AdminClient({"bootstrap.servers": services_env["KAFKA_BOOTSTRAP_SERVERS"]})
        topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{app}.")]
        for future in admin.delete_topics(topics).values() if topics else []:
            future.result()


def test_bad_input_is_refused_before_anything_starts(services_env: dict[str, str], tmp_path: Path) -> None:
    too_few = run_demo("--accounts", "1", env=services_env)
    assert too_few.returncode == 2
    assert "--accounts" in too_few.stderr
    bad_schema = run_demo("--schema", "Robert'); DROP TABLE students;--", env=services_env)
    assert bad_schema.returncode == 2
    assert "invalid schema name" in bad_schema.stderr
    # Outside a checkout the bank's code is not importable: the demo says where to run it.
    elsewhere = run_demo(env={**services_env, "PYTHONPATH": ""}, cwd=tmp_path)
    assert elsewhere.returncode == 2
    assert "run it from a checkout of tidings" in elsewhere.stderr
