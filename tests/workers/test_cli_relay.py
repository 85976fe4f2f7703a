"""`tidings relay` and `tidings relay status` on the real services, and their configuration."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from eventstore import ConfigurationError, PostgresEventStore
from tests.eventstore.relay_support import RelayProcess, append_events, read_committed, relay_row
from tests.support import tidings_script
from tests.workers.worker_support import eventually
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema
from workers.cli_options import kafka_settings
from workers.relay_cli import load_routing
from workers.status import collect_status


def _run(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tidings_script(), "relay", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _env(schema: PostgresSchema, kafka: KafkaNamespace) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": schema.server_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "TIDINGS_SCHEMA": schema.name,
    }


def test_a_missing_topic_with_creation_off_exits_1_naming_it(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema, kafka_namespace: KafkaNamespace
) -> None:
    append_events(event_store, streams=1, per_stream=1)
    result = _run(
        "--app",
        kafka_namespace.topic("bank"),
        "--no-create-topics",
        env=_env(postgres_schema, kafka_namespace),
    )
    assert result.returncode == 1, result.stderr
    assert f"the relay's topics {kafka_namespace.topic('bank.events')} do not exist" in result.stderr
    assert "--create-topics" in result.stderr


def test_an_unmigrated_store_is_a_usage_error(
    postgres_schema: PostgresSchema, kafka_namespace: KafkaNamespace
) -> None:
    result = _run(env=_env(postgres_schema, kafka_namespace))
    assert result.returncode == 2
    assert "run `tidings migrate` first" in result.stderr


def test_settings_the_guarantees_rest_on_are_refused(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema, kafka_namespace: KafkaNamespace
) -> None:
    env = {**_env(postgres_schema, kafka_namespace), "TIDINGS_KAFKA_ACKS": "1"}
    result = _run(env=env)
    assert result.returncode == 2
    assert "sets acks itself" in result.stderr


def test_the_relay_publishes_and_its_status_shows_it(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    env = _env(postgres_schema, kafka_namespace)
    appended = append_events(event_store, streams=3, per_stream=2)
    log = tmp_path / "relay.log"
    port = _free_port()
    with open(log, "wb") as output:
        relay = subprocess.Popen(
            [
                *(tidings_script(), "relay", "--app", kafka_namespace.topic("bank"), "--partitions", "2"),
                *("--port", str(port), "--host", "127.0.0.1"),
            ],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            seen = read_committed(
                kafka_namespace.bootstrap_servers,
                [kafka_namespace.topic("bank.events")],
                kafka_namespace.group("check"),
                lambda s: len(s) >= len(appended),
            )
            # The probes the Helm chart points Kubernetes at: alive, ready (leading), and the metrics.
            assert _get(port, "/healthz") == (200, {"alive": True})
            eventually(
                lambda: (
                    _get(port, "/readyz")
                    == (
                        200,
                        {
                            "ready": True,
                            "relay": "default",
                            "leading": True,
                            "last_published": len(appended),
                            "verdict": "ok",
                            "problem": "",
                            "command_sender": "leading",  # the relay's process sends the outbox too
                        },
                    )
                ),
                timeout=30,
                what="the relay reports itself ready, leading, at the last event",
            )
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                assert b"tidings_relay_" in response.read()
        finally:
            relay.terminate()
            assert relay.wait(60) == 0
    assert {m.event_id for m in seen} == set(appended)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(line["message"] == "relay leads" and line["level"] == "info" for line in lines), lines

    status = _run("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)
    assert row["name"] == "default"
    assert row["last_published"] == len(appended)
    assert row["lag_events"] == 0


def test_kafka_settings_come_from_pairs_and_the_environment() -> None:
    environ = {
        "TIDINGS_KAFKA_SASL_PASSWORD": "s3cret",
        "TIDINGS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "HOME": "/x",
    }
    settings = kafka_settings(["linger.ms=20", "security.protocol=SSL"], environ)
    assert settings == {"sasl.password": "s3cret", "security.protocol": "SSL", "linger.ms": "20"}
    with pytest.raises(ConfigurationError, match="name=value"):
        kafka_settings(["nonsense"], {})


def test_a_relay_config_never_shows_kafka_secrets() -> None:
    from eventstore import RelayConfig

    config = RelayConfig("kafka:9092", kafka={"sasl.password": "s3cret"})
    assert "s3cret" not in repr(config)
    assert "sasl.password" in repr(config)


def test_routing_files_are_read_and_bad_ones_say_where(tmp_path: Path) -> None:
    good = tmp_path / "routing.toml"
    good.write_text(
        'default_topic = "bank.events"\n[event_types."bank.AuditNoted"]\ntopic = "bank.audit"\n'
        '[categories.transfer]\nkey = "correlation_id"\n'
    )
    assert load_routing(good).topics() == ["bank.events", "bank.audit"]

    cases = {
        'default_topic = "a b"\n': "not a Kafka topic name",
        'default_topic = "x"\nextra = 1\n': r"bad.toml: unknown entries \['extra'\]",
        'default_topic = "x"\n[categories.t]\nkey = "nope"\n': r"\[categories.t\]: unknown key source",
        'default_topic = "x"\n[event_types.A]\npartition = 3\n': "may only set topic and key",
        "not toml at all = = =": "is not TOML",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(ConfigurationError, match=message):
            load_routing(bad)
    with pytest.raises(ConfigurationError, match="cannot read the routing file"):
        load_routing(tmp_path / "missing.toml")


def test_an_operator_sees_a_lost_tail_in_status_and_readiness_and_resolves_it_with_resume_after(
    event_store: PostgresEventStore,
    postgres_schema: PostgresSchema,
    kafka_namespace: KafkaNamespace,
    tmp_path: Path,
) -> None:
    env = _env(postgres_schema, kafka_namespace)
    app = kafka_namespace.topic("bank")
    append_events(event_store, streams=2, per_stream=3)  # 1..6
    first = RelayProcess(env, ["--app", app], tmp_path / "first.log")
    eventually(lambda: relay_row(event_store)[1] == 6, 60, "the first relay publishing")
    assert first.terminate() == 0
    # PostgreSQL loses its last two events (a failover, say) and gives number 5 to a new one.
    schema = event_store.config.schema
    with event_store.connection() as conn:
        gone = conn.execute(
            sql.SQL("DELETE FROM {} WHERE event_number > 4 RETURNING id").format(
                sql.Identifier(schema, "event_order")
            )
        ).fetchall()
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(sql.Identifier(schema, "events")),
            [[row[0] for row in gone]],
        )
        conn.execute(
            sql.SQL("UPDATE {} SET last_event_number = 4").format(sql.Identifier(schema, "sequencer"))
        )
    (new,) = append_events(event_store, streams=1, per_stream=1, prefix="after-failover")

    port = _free_port()
    args = ["--app", app, "--port", str(port), "--problem-retry", "0.2"]
    with_problem = RelayProcess(env, args, tmp_path / "second.log")
    try:
        eventually(lambda: _readiness(port).get("verdict") == "kafka_ahead", 60, "the verdict in /readyz")
        status, body = _get(port, "/readyz")
        assert status == 200, "a relay with a verdict stays ready: a restart would not help"
        assert "resume-after 4" in body["problem"]

        result = _run("status", "--json", env=env)
        assert result.returncode == 1, result.stdout
        (row,) = json.loads(result.stdout)
        assert (row["verdict"], row["last_numbered"]) == ("kafka_ahead", 5)
        assert "resume-after 4" in row["problem"]
        text = _run("status", env=env)
        assert text.returncode == 1
        assert "kafka_ahead" in text.stdout
        # `tidings status` carries it too, as JSON that parses.
        overview = collect_status(
            event_store, kafka_namespace.bootstrap_servers, {}, topics=[f"{app}.events"]
        )
        (relay,) = json.loads(json.dumps(overview.document()))["relays"]
        assert relay["verdict"] == "kafka_ahead"
        assert relay["problem_since"] is not None

        refused = _run("resume-after", "99", env=env)
        assert refused.returncode == 2
        assert "give a number in 0..5" in refused.stderr

        decided = _run("resume-after", "4", "--json", env=env)
        assert decided.returncode == 0, decided.stderr
        assert json.loads(decided.stdout) == {"relay": "default", "after_event_number": 4, "epoch": 1}
        eventually(lambda: _run("status", env=env).returncode == 0, 60, "the verdict cleared")
        seen = read_committed(
            kafka_namespace.bootstrap_servers,
            [f"{app}.events"],
            kafka_namespace.group("check"),
            lambda s: any(m.event_id == new for m in s),
        )
        assert [m.headers["tidings.epoch"] for m in seen if m.event_id == new] == [b"1"]
    finally:
        assert with_problem.terminate() == 0


def _readiness(port: int) -> dict[str, Any]:
    try:
        return _get(port, "/readyz")[1]  # type: ignore[no-any-return]
    except OSError:
        return {}  # not listening yet


def test_an_ignored_store_must_be_a_store_id(
    postgres_schema: PostgresSchema, kafka_namespace: KafkaNamespace
) -> None:
    result = _run("--ignore-store", "staging", env=_env(postgres_schema, kafka_namespace))
    assert result.returncode == 2
    assert "'staging' is not a store id" in result.stderr
