"""`tidings events read | tail` on the real PostgreSQL: the bank's Avro events, JSON and opaque data,
following the store as it grows, and bad input; the event documents' JSON, property-tested."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import threading
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from eventstore import ANY, EventData, PostgresEventStore, RecordedEvent
from examples.bank.accounts import Deposit, OpenAccount
from examples.bank.transfers import bank as bank_commands
from examples.bank.workers import mapper
from tests.support import tidings_script
from tests.workers.cli_support import ROOT, tidings
from tests.workers.worker_support import eventually
from tidings import Application
from tidings.pytest_plugin import PostgresSchema
from workers.event_view import DataDecoder, event_document, json_line, jsonable

BANK = "examples.bank.workers:build"
KEYS = {
    "event_number",
    "stream_id",
    "stream_version",
    "event_type",
    "created_at",
    "event_id",
    "causation_id",
    "correlation_id",
    "schema_id",
    "metadata",
    "metadata_base64",
    "data_format",
    "data",
    "data_base64",
    "data_note",
}


def _env(schema: PostgresSchema) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": schema.server_url,
        "TIDINGS_SCHEMA": schema.name,
        "COLUMNS": "200",
    }


def _lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _open_account(store: PostgresEventStore) -> uuid.UUID:
    """An account opened by Ada (with metadata), with one deposit: two Avro events."""
    bank = Application(store, mapper(), bank_commands)
    account = uuid.uuid4()
    bank.dispatch(OpenAccount(account, "Ada"), metadata={"user": "ada", "request": {"ip": "10.0.0.1"}})
    bank.dispatch(Deposit(account, Decimal("12.50")))
    eventually(lambda: store.last_event_number() >= 2, what="both events numbered")
    return account


def test_read_shows_a_stream_decoded_by_the_app_by_schemas_or_as_what_it_is(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema
) -> None:
    env = _env(postgres_schema)
    account = _open_account(event_store)
    stream = f"account-{account}"
    recorded = event_store.read_stream_forward(stream)

    raw = _lines(tidings("events", "read", stream, "--json", env=env))
    assert [set(d) for d in raw] == [KEYS, KEYS]
    opened = raw[0]
    assert (opened["event_number"], opened["stream_id"], opened["stream_version"]) == (
        recorded[0].event_number,
        stream,
        1,
    )
    assert (opened["event_type"], opened["event_id"]) == ("bank.AccountOpened", str(recorded[0].event_id))
    assert opened["schema_id"].startswith("avro:")
    assert opened["causation_id"] == str(recorded[0].causation_id)
    assert opened["correlation_id"] == str(recorded[0].correlation_id)
    assert datetime.fromisoformat(opened["created_at"]) == recorded[0].created_at
    assert opened["metadata"]["request"] == {"ip": "10.0.0.1"}
    assert (opened["data_format"], opened["data"]) == ("bytes", None)
    assert base64.b64decode(opened["data_base64"]) == recorded[0].data
    assert f"Avro, {len(recorded[0].data)} bytes, schema {opened['schema_id']}" in opened["data_note"]

    decoded = _lines(tidings("events", "read", stream, "--app", BANK, "--json", env=env))
    assert [d["data_format"] for d in decoded] == ["event", "event"]
    assert decoded[0]["data"]["owner"] == "Ada"
    assert decoded[0]["data"]["account_id"] == str(account)
    assert decoded[1]["data"]["amount"] == "12.50"
    assert decoded[1]["data_base64"] is None

    schemas = _lines(tidings("events", "read", stream, "--schemas", str(ROOT / "schemas"), "--json", env=env))
    assert [d["data_format"] for d in schemas] == ["avro", "avro"]
    assert schemas[0]["data"]["owner"] == "Ada"
    assert schemas[0]["data"]["account_id"] == str(account)

    second = _lines(tidings("events", "read", stream, "--from", "2", "--count", "1", "--json", env=env))
    assert [d["stream_version"] for d in second] == [2]

    table = tidings("events", "read", stream, "--app", BANK, env=env)
    assert table.returncode == 0, table.stderr
    assert f"{stream}: version 2; versions 1 to 2" in table.stdout
    assert f"#{recorded[0].event_number} bank.AccountOpened  {stream} v1" in table.stdout
    assert '"owner": "Ada"' in table.stdout
    assert '"request": {"ip": "10.0.0.1"}' in table.stdout


def test_json_and_opaque_data_and_metadata_are_shown_as_they_are(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema
) -> None:
    event_store.append_to_stream(
        "misc-1",
        ANY,
        [
            EventData("Noted", b'{"text": "caf\\u00e9", "n": [1, 2.5]}', metadata=b'{"user": "[bold]x[/]"}'),
            EventData("Blob", b"\xff\x00\x01", metadata=b"\x80not json"),
        ],
    )
    env = _env(postgres_schema)
    noted, blob = _lines(tidings("events", "read", "misc-1", "--json", env=env))
    assert (noted["data_format"], noted["data"], noted["data_note"]) == (
        "json",
        {"text": "café", "n": [1, 2.5]},
        None,
    )
    assert noted["metadata"] == {"user": "[bold]x[/]"}
    assert (blob["data_format"], blob["data_note"]) == ("bytes", "3 bytes, not JSON")
    assert (blob["metadata"], base64.b64decode(blob["metadata_base64"])) == (None, b"\x80not json")
    table = tidings("events", "read", "misc-1", env=env)
    assert table.returncode == 0, table.stderr
    assert '"user": "[bold]x[/]"' in table.stdout, "user data is printed as is, never as markup"
    assert "3 bytes, not JSON" in table.stdout


def test_tail_prints_the_global_order_and_follows_it_until_a_signal(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema
) -> None:
    env = _env(postgres_schema)
    for n in range(5):
        event_store.append_to_stream(f"s-{n % 2}", ANY, [EventData("Noted", b'{"n": %d}' % n)])
    eventually(lambda: event_store.last_event_number() == 5, what="numbered")

    last = _lines(tidings("events", "tail", "--no-follow", "--last", "3", "--json", env=env))
    assert [d["event_number"] for d in last] == [3, 4, 5]
    assert [d["data"]["n"] for d in last] == [2, 3, 4]
    default = _lines(tidings("events", "tail", "--no-follow", "--json", env=env))
    assert [d["event_number"] for d in default] == [1, 2, 3, 4, 5], "the last ten, when there are fewer"
    some = _lines(tidings("events", "tail", "--from-number", "2", "--count", "2", "--json", env=env))
    assert [d["event_number"] for d in some] == [2, 3], "--count ends even a following tail"

    documents = [json.loads(line) for line in _follow(event_store, env, signal.SIGTERM, "Arrived", "--json")]
    assert [(d["event_number"], d["event_type"]) for d in documents] == [(5, "Noted"), (6, "Arrived")]
    assert documents[-1]["data"] == {"late": True}
    printed = _follow(event_store, env, signal.SIGINT, "Later")
    assert printed[0].startswith("#6 Arrived  s-new v1"), printed
    assert any(line.startswith("#7 Later  s-new v2") for line in printed), printed


def _follow(
    store: PostgresEventStore, env: dict[str, str], stop: signal.Signals, event_type: str, *args: str
) -> list[str]:
    """What ``tidings events tail --last 1 ARGS`` prints until ``stop`` ends it (exit 0), once an event of
    ``event_type`` appended while it runs has been printed."""
    follower = subprocess.Popen(
        [tidings_script(), "events", "tail", "--last", "1", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follower.stdout is not None
    assert follower.stderr is not None
    printed: list[str] = []
    reader = threading.Thread(target=lambda: printed.extend(iter(follower.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        eventually(lambda: bool(printed), timeout=30, what="the last event printed")
        store.append_to_stream("s-new", ANY, [EventData(event_type, b'{"late": true}')])
        eventually(lambda: any(event_type in line for line in printed), timeout=30, what="the new event")
        follower.send_signal(stop)
        assert follower.wait(30) == 0, follower.stderr.read()
    finally:
        if follower.poll() is None:
            follower.kill()
        reader.join(30)
    return printed


def test_bad_input_is_a_clear_error_with_its_exit_code(
    event_store: PostgresEventStore, postgres_schema: PostgresSchema
) -> None:
    env = _env(postgres_schema)
    _open_account(event_store)
    missing = tidings("events", "read", "account-nobody", env=env)
    assert (missing.returncode, missing.stderr.strip()) == (
        1,
        f"error: no stream 'account-nobody' in schema '{postgres_schema.name}'",
    )
    event_store.append_to_stream("gone-1", ANY, [EventData("Noted", b"{}")])
    event_store.delete_stream("gone-1")
    deleted = tidings("events", "read", "gone-1", env=env)
    assert deleted.returncode == 1
    assert "error: stream 'gone-1' was soft-deleted" in deleted.stderr
    bad_app = tidings("events", "read", "gone-1", "--app", "no_such_module:app", env=env)
    assert bad_app.returncode == 2
    assert "cannot import 'no_such_module'" in bad_app.stderr
    no_schemas = tidings("events", "tail", "--schemas", "/nonexistent", env=env)
    assert no_schemas.returncode == 2
    assert "no such directory" in no_schemas.stderr
    for bad in (["read", "s", "--from", "0"], ["read", "s", "--from", "two"], ["tail", "--count", "0"]):
        result = tidings("events", *bad, env=env)
        assert result.returncode == 2, bad
        assert "Invalid value" in result.stderr, result.stderr
    both = tidings("events", "tail", "--last", "1", "--from-number", "1", env=env)
    assert (both.returncode, both.stderr.strip()) == (2, "error: give --from-number or --last, not both")
    unmigrated = tidings("events", "tail", env={**env, "TIDINGS_SCHEMA": "no_such_schema"})
    assert unmigrated.returncode == 2
    assert "run `tidings migrate` first" in unmigrated.stderr


# --- the documents, without services ---------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _recorded(data: bytes, metadata: bytes) -> RecordedEvent:
    return RecordedEvent(
        uuid.uuid4(), 7, "s-1", 1, "Noted", data, metadata, "", None, uuid.uuid4(), datetime.now(UTC)
    )


@given(JSON, JSON)
def test_json_data_and_metadata_come_back_from_a_json_line_as_they_were(data: Any, metadata: Any) -> None:
    recorded = _recorded(json.dumps(data).encode(), json.dumps(metadata).encode())
    line = json_line(event_document(recorded, DataDecoder()))
    assert len(line.splitlines()) == 1, "one event, one line"
    document = json.loads(line)
    assert (document["data_format"], document["data"], document["metadata"]) == ("json", data, metadata)
    assert document["data_base64"] is document["metadata_base64"] is None


@given(st.binary(), st.binary())
def test_any_bytes_are_shown_as_json_or_kept_whole_in_base64(data: bytes, metadata: bytes) -> None:
    document = json.loads(json_line(event_document(_recorded(data, metadata), DataDecoder())))
    if document["metadata_base64"] is None:
        assert document["metadata"] == json.loads(metadata)
    else:
        assert base64.b64decode(document["metadata_base64"]) == metadata
    if document["data_format"] == "bytes":
        assert base64.b64decode(document["data_base64"]) == data
    else:
        assert document["data"] == json.loads(data)


VALUES = st.recursive(
    st.none()
    | st.decimals()
    | st.uuids()
    | st.datetimes(timezones=st.just(UTC))
    | st.floats()
    | st.binary()
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3).map(tuple)
        | st.frozensets(st.integers(), max_size=3)
        | st.dictionaries(st.integers(), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(VALUES)
def test_a_decoded_event_s_values_always_print_as_json(value: Any) -> None:
    json.dumps(jsonable(value), allow_nan=False)
