"""`tidings status` on the real services: the bank's relay and worker, a plain handler, and its failures."""

from __future__ import annotations

import json
import socket
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from eventstore import ANY, PostgresEventStore
from eventstore.relay import Relay, RelayConfig, relay_status
from examples.bank.accounts import Deposit, OpenAccount, RequestTransfer
from examples.bank.events import MoneyDeposited
from examples.bank.transfers import bank as bank_commands
from examples.bank.workers import mapper
from tests.workers import apps
from tests.workers.cli_support import WorkerProcess, rows, tidings, worker_env
from tests.workers.worker_support import append_noted, eventually, stack
from tidings import Application
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema
from workers.parking import ParkedEvents
from workers.status import StoreStatus, collect_status

BANK = "examples.bank.workers:build"


def _status(store: PostgresEventStore, kafka: KafkaNamespace, topic: str, *names: str) -> StoreStatus:
    return collect_status(store, kafka.bootstrap_servers, {}, topics=[topic], handlers=list(names))


def _json(*args: str, env: dict[str, str]) -> dict[str, Any]:
    result = tidings("status", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def _handler(document: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [h for h in document["handlers"] if h["name"] == name]
    return found


def test_the_bank_s_relay_and_handlers_lag_parked_events_and_process_instances(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    app = kafka_namespace.topic("bank")
    topic, balances, transfers = f"{app}.events", f"{app}.balances", f"{app}.transfers"
    env = worker_env(postgres_schema, kafka_namespace, app, TIDINGS_APP=app)
    bank = Application(event_store, mapper(), bank_commands)
    ada, bob = uuid.uuid4(), uuid.uuid4()
    bank.dispatch(OpenAccount(ada, "Ada"))
    bank.dispatch(OpenAccount(bob, "Bob"))
    bank.dispatch(Deposit(ada, Decimal("100.00")))
    bank.dispatch(RequestTransfer(uuid.uuid4(), ada, bob, Decimal("30.00")))
    relay = Relay(event_store, RelayConfig(kafka_namespace.bootstrap_servers, app=app, partitions=2))

    def caught_up() -> bool:
        status = _status(event_store, kafka_namespace, topic, balances, transfers)
        last = event_store.last_event_number()
        return all(h.total_lag == 0 and h.last_event_number == last for h in status.handlers)

    relay.start()
    try:
        with WorkerProcess([BANK, "--partitions", "2"], env, tmp_path / "worker.log") as worker:
            eventually(caught_up, what="both handlers caught up with the transfer")

            # An event of Bob's whose metadata no handler can read (aggregates read the data only): a
            # poison event of this store, parked, and Bob's later events wait behind it. (A message no
            # relay wrote is parked too, but holds no key back: it is no event of Bob's.) The next
            # transfer's deposit to Bob waits there too, so its process instance stays open.
            poison = MoneyDeposited(bob, Decimal("0.00"), Decimal("30.00"), datetime.now(UTC))
            unreadable = replace(mapper().to_event_data(poison), metadata=b"\x00not json")
            event_store.append_to_stream(f"account-{bob}", ANY, [unreadable])
            bank.dispatch(RequestTransfer(uuid.uuid4(), ada, bob, Decimal("10.00")))
            parked = ParkedEvents(event_store)
            eventually(
                lambda: parked.count(balances) == parked.count(transfers) == 2,
                what="the poison event and the deposit behind it parked by both handlers",
            )
            eventually(caught_up, what="both handlers caught up again")
            found = _json(env=env)  # handlers found without the app: TIDINGS_APP names the topic
            assert found["last_event_number"] == event_store.last_event_number()
            (relay_row,) = found["relays"]
            assert relay_row["last_published"] == found["last_event_number"]
            assert relay_row["lag_events"] == 0
            assert {h["name"] for h in found["handlers"]} == {balances, transfers}
            pm = _handler(found, transfers)
            assert (pm["kind"], pm["mode"], pm["instances"], pm["scheduled"]) == (
                "process manager",
                "exactly-once",
                1,
                1,  # the open transfer's timeout
            )
            read_model = _handler(found, balances)
            assert read_model["kind"] is None, "projection or process manager: the store cannot tell"
            assert read_model["mode"] == "exactly-once"
            for handler in (pm, read_model):
                assert (handler["parked"], handler["total_lag"], handler["lag_exact"]) == (2, 0, True)
                assert handler["group_state"] == "stable"
                assert handler["members"] >= 1
                assert handler["last_event_number"] == found["last_event_number"]
                assert [(p["topic"], p["partition"]) for p in handler["partitions"]] == [
                    (topic, 0),
                    (topic, 1),
                ]
            assert worker.terminate() == 0

        # The worker is gone and three deposits are published: each handler is three events behind.
        before = event_store.last_event_number()
        for _ in range(3):
            bank.dispatch(Deposit(ada, Decimal("1.00")))
        eventually(lambda: relay_status(event_store)[0].last_published == before + 3, what="published")
        behind = _json("--app", BANK, env=env)
        assert [(h["name"], h["kind"]) for h in behind["handlers"]] == [
            (balances, "projection"),
            (transfers, "process manager"),
        ]
        for handler in behind["handlers"]:
            assert (handler["total_lag"], handler["last_event_number"]) == (3, before)
            assert (handler["group_state"], handler["members"]) == ("empty", 0)
            assert sum(p["lag"] for p in handler["partitions"]) == 3

        table = tidings("status", "--app", BANK, env=env)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert any(" default " in line and f" {before + 3} " in line for line in lines), table.stdout
        assert any(f" {balances} " in line and " projection " in line and " 3 " in line for line in lines)
        assert any(f" {transfers} " in line and " process manager " in line for line in lines)
        assert any(f"{topic}[0]" in line for line in lines), table.stdout

        with WorkerProcess([BANK, "--partitions", "2"], env, tmp_path / "worker2.log") as worker:
            eventually(caught_up, what="caught up after the restart")
            again = _json("--app", BANK, "--handler", balances, env=env)
            (only,) = again["handlers"]
            assert (only["name"], only["total_lag"], only["last_event_number"]) == (balances, 0, before + 3)
            assert worker.terminate() == 0
    finally:
        relay.stop()


def test_a_plain_handler_s_last_event_is_read_from_kafka_and_its_parked_events_from_the_store(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    url, schema = postgres_schema.server_url, postgres_schema.name
    apps.create_tables(url, schema)
    picky = kafka_namespace.group("picky")
    with event_store.connection() as conn:
        conn.execute(f'INSERT INTO "{schema}".poison_keys VALUES (%s)', ("bad0",))
    parked = ParkedEvents(event_store)
    with stack(event_store, kafka_namespace, partitions=2) as s:
        env = worker_env(postgres_schema, kafka_namespace, s.app_name)
        append_noted(event_store, streams=3, per_stream=2, prefix="ok")
        append_noted(event_store, streams=1, per_stream=2, prefix="bad")
        args = ["tests.workers.apps:build", "--handler", picky, "--partitions", "2"]
        with WorkerProcess(args, env, tmp_path / "worker.log") as worker:
            eventually(lambda: parked.count(picky) == 2, what="the poison key's two events parked")
            eventually(lambda: len(rows(url, schema, "picky_seen")) == 6, what="the other keys handled")
            eventually(
                lambda: _status(event_store, kafka_namespace, s.topic, picky).handler(picky).total_lag == 0,
                what="its offsets committed",
            )
            found = _handler(_json("--app-name", s.app_name, env=env), picky)
            assert (found["kind"], found["mode"], found["consistency"]) == (
                "handler",
                "at-least-once",
                "eventual",
            )
            assert (found["parked"], found["instances"], found["scheduled"]) == (2, None, None)
            # Its last event: the newest parked one, read from the header of the message before its offset.
            assert found["last_event_number"] == event_store.last_event_number()
            for partition in found["partitions"]:
                assert partition["checkpoint"] is None
                assert partition["position"] == partition["committed"]
            declared = _handler(
                _json("--app", "tests.workers.apps:build", "--handler", picky, env=env), picky
            )
            assert (declared["kind"], declared["total_lag"]) == ("handler", 0)
            assert worker.terminate() == 0


def test_a_kafka_that_does_not_answer_and_bad_input_are_clear_errors(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema, kafka_namespace: KafkaNamespace
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{probe.getsockname()[1]}"  # closed once the probe is: nothing listens there
    env = worker_env(postgres_schema, kafka_namespace, "bank", KAFKA_BOOTSTRAP_SERVERS=nobody)
    silent = tidings("status", "--timeout", "1", env=env)
    assert silent.returncode == 1, silent.stderr
    assert silent.stderr.startswith(f"error: Kafka at {nobody} ")

    bad_app = tidings("status", "--app", "no_such_module:app", env=env)
    assert bad_app.returncode == 2
    assert "cannot import 'no_such_module'" in bad_app.stderr
    no_handler = tidings("status", "--app", "tests.workers.apps:example", "--handler", "nope", env=env)
    assert no_handler.returncode == 2
    assert "the app has no handler ['nope']" in no_handler.stderr
    unmigrated = tidings("status", env={**env, "TIDINGS_SCHEMA": "no_such_schema"})
    assert unmigrated.returncode == 2
    assert "run `tidings migrate` first" in unmigrated.stderr
