"""`tidings outbox list | retry | discard` on the real PostgreSQL, run as an operator runs it.

The outbox rows are written as a process manager writes them (``workers.process_manager``), and set aside
with the command sender's own statement, as it does with a command Kafka can never accept. What the sender
would send next is read with its own query, so `retry` and `discard` are shown from the sender's side too.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from eventstore import PostgresEventStore
from eventstore.command_outbox import outbox_status, set_aside
from eventstore.command_sender import _Statements
from tests.workers.cli_support import tidings, worker_env
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema

TOO_LARGE = 'KafkaError{code=MSG_SIZE_TOO_LARGE,val=10,str="Broker: Message size too large"} ' + "x" * 500
NO_TOPIC = "KafkaError{code=TOPIC_EXCEPTION,str=\"Invalid topic name 'bad [bold]topic[/]'\"}"


def _write(store: PostgresEventStore, destination: str, key: str | None) -> int:
    """A command to another application, written as a process manager writes it."""
    statement = sql.SQL(
        "INSERT INTO {t} (destination, command_type, command, metadata, causation_id, correlation_id, "
        "created_by, command_uuid, partition_key) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"
    ).format(t=sql.Identifier(store.config.schema, "command_outbox"))
    with store.connection() as conn:
        row = conn.execute(
            statement,
            (
                destination,
                "billing.commands:Charge",
                Jsonb({"amount": "10.00"}),
                Jsonb({}),
                uuid.uuid4(),
                uuid.uuid4(),
                "OrderProcess",
                uuid.uuid4(),
                key,
            ),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _refuse(store: PostgresEventStore, id_: int, error: str) -> None:
    """The command sender setting a command aside, with Kafka's error."""
    with store.connection() as conn:
        conn.execute(_Statements(store.config.schema).set_aside, (error, id_))


def _sendable(store: PostgresEventStore) -> list[int]:
    """The ids the command sender would send next."""
    with store.connection() as conn:
        return [row[0] for row in conn.execute(_Statements(store.config.schema).unsent, (1000,))]


def _outbox(store: PostgresEventStore) -> list[tuple[Any, ...]]:
    statement = sql.SQL(
        "SELECT id, destination, sent_at, failed_at, last_error, attempts FROM {} ORDER BY id"
    )
    with store.connection() as conn:
        return conn.execute(
            statement.format(sql.Identifier(store.config.schema, "command_outbox"))
        ).fetchall()


def test_a_command_set_aside_is_listed_then_retried_or_discarded_and_bad_input_changes_nothing(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema, kafka_namespace: KafkaNamespace
) -> None:
    env = worker_env(postgres_schema, kafka_namespace, kafka_namespace.topic("outbox"))
    store = event_store
    large = _write(store, "billing", "order-1")
    behind = _write(store, "billing", "order-1")  # same target: waits behind the one set aside
    other = _write(store, "billing", "order-2")
    odd = _write(store, "bad [bold]topic[/]", "order-3")
    sent = _write(store, "shipping", "order-4")
    with store.connection() as conn:
        conn.execute(
            sql.SQL("UPDATE {} SET sent_at = now() WHERE id = %s").format(
                sql.Identifier(store.config.schema, "command_outbox")
            ),
            (sent,),
        )
    _refuse(store, large, TOO_LARGE)
    _refuse(store, odd, NO_TOPIC)
    assert _sendable(store) == [other]

    # list: both commands set aside, oldest first, each with its own error, as JSON and as a table.
    listed = tidings("outbox", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    documents = json.loads(listed.stdout)
    assert [(d["id"], d["destination"], d["key"], d["error"]) for d in documents] == [
        (large, "billing", "order-1", TOO_LARGE),
        (odd, "bad [bold]topic[/]", "order-3", NO_TOPIC),
    ]
    assert {d["command_type"] for d in documents} == {"billing.commands:Charge"}
    assert all(d["failed_at"] >= d["created_at"] for d in documents)
    table = tidings("outbox", "list", env=env)
    assert table.returncode == 0, table.stderr
    assert "2 command(s) set aside" in table.stdout
    assert "Broker: Message size too large" in table.stdout
    # Destinations and errors are shown as they are, never read as markup.
    assert "bad [bold]topic[/]" in table.stdout
    assert "Invalid topic name 'bad [bold]topic[/]'" in table.stdout
    limited = tidings("outbox", "list", "--json", "--limit", "1", env=env)
    assert [d["id"] for d in json.loads(limited.stdout)] == [large]

    # tidings status counts them, per destination.
    status = tidings("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    outbox = {o["destination"]: o for o in json.loads(status.stdout)["outbox"]}
    assert (outbox["billing"]["unsent"], outbox["billing"]["set_aside"]) == (3, 1)
    assert outbox["billing"]["last_error"] == TOO_LARGE
    assert "shipping" not in outbox

    # Bad input: a clear message, a non-zero exit, and nothing changed.
    before = _outbox(store)
    unknown = 10_000_000
    for command in ("retry", "discard"):
        missing = tidings("outbox", command, "--id", str(unknown), env=env)
        assert missing.returncode == 1, missing.stdout
        assert "no such command set aside" in missing.stderr
        assert str(unknown) in missing.stderr
        for not_aside in (behind, sent):  # waiting to be sent, or sent: not set aside
            refused = tidings("outbox", command, "--id", str(not_aside), env=env)
            assert refused.returncode == 1, refused.stdout
            assert str(not_aside) in refused.stderr
        mixed = tidings("outbox", command, "--id", str(large), "--id", str(unknown), env=env)
        assert mixed.returncode == 1, mixed.stdout
        assert str(unknown) in mixed.stderr
        malformed = tidings("outbox", command, "--id", "seventeen", env=env)
        assert malformed.returncode == 2
        assert "Invalid value for '--id'" in malformed.stderr
        huge = tidings("outbox", command, "--id", str(2**70), env=env)
        assert huge.returncode in (1, 2), huge.stdout
        assert "Traceback" not in huge.stderr
        neither = tidings("outbox", command, env=env)
        assert neither.returncode == 2
        assert "give either --id ID (repeatable) or --all" in neither.stderr
        both = tidings("outbox", command, "--id", str(large), "--all", env=env)
        assert both.returncode == 2
        assert "give either --id ID (repeatable) or --all" in both.stderr
    bad_limit = tidings("outbox", "list", "--limit", "-1", env=env)
    assert bad_limit.returncode == 2
    assert "Traceback" not in bad_limit.stderr
    assert _outbox(store) == before

    # A store not migrated: said so, exit 2, for every subcommand.
    bare = f"{postgres_schema.name}_bare"
    with psycopg.connect(postgres_schema.server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(bare)))
    try:
        for args in (["list"], ["retry", "--id", str(large)], ["discard", "--all"]):
            result = tidings("outbox", *args, "--schema", bare, env=env)
            assert result.returncode == 2, result.stdout
            assert (
                f"the store in schema '{bare}' is not migrated: run `tidings migrate` first" in result.stderr
            )
    finally:
        with psycopg.connect(postgres_schema.server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(bare)))
    assert _outbox(store) == before

    # retry: unsent again (failed_at cleared), and the sender sends it and the command behind it.
    retried = tidings("outbox", "retry", "--id", str(large), env=env)
    assert retried.returncode == 0, retried.stderr
    assert "1 command(s) given to the sender again" in retried.stdout
    row = next(r for r in _outbox(store) if r[0] == large)
    assert (row[2], row[3]) == (None, None)
    assert _sendable(store) == [large, behind, other]
    assert [c.id for c in set_aside(store)] == [odd]
    billing = next(o for o in outbox_status(store) if o.destination == "billing")
    assert (billing.unsent, billing.set_aside) == (3, 0)
    text = tidings("status", env=env)
    assert text.returncode == 0, text.stderr
    assert "command outbox to billing: 3 unsent" in text.stdout
    assert "1 set aside (`tidings outbox list`)" in text.stdout  # the odd destination's, still

    # discard: gone, and never sent.
    discarded = tidings("outbox", "discard", "--id", str(odd), "--json", env=env)
    assert discarded.returncode == 0, discarded.stderr
    assert json.loads(discarded.stdout) == {"discarded": 1}
    assert odd not in [r[0] for r in _outbox(store)]
    assert _sendable(store) == [large, behind, other]
    assert [o.destination for o in outbox_status(store)] == ["billing"]
    assert json.loads(tidings("outbox", "list", "--json", env=env).stdout) == []
    assert tidings("outbox", "list", env=env).stdout.strip() == "no command set aside"

    # --all: the sender refuses it again after a retry; the operator gives up on it.
    _refuse(store, large, TOO_LARGE)
    again = tidings("outbox", "retry", "--all", "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"retried": 1}
    _refuse(store, large, TOO_LARGE)
    gone = tidings("outbox", "discard", "--all", env=env)
    assert gone.returncode == 0, gone.stderr
    assert "1 command(s) discarded" in gone.stdout
    assert _sendable(store) == [behind, other]
    nothing = tidings("outbox", "discard", "--all", env=env)
    assert nothing.returncode == 1
    assert "no such command set aside" in nothing.stderr
    assert [r[0] for r in _outbox(store)] == [behind, other, sent]
