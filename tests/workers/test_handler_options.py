"""Handler options are checked when a worker loads them: each mistake is a ConfigurationError saying what."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from eventstore import PostgresEventStore, sqlalchemy_url
from eventstore.errors import ConfigurationError
from tests.workers.worker_support import mapper
from workers import EventHandler, Projection, Retry, WorkerApp
from workers.handler import validate_handler


class Valid(EventHandler):
    name = "valid"

    def handle(self, event: Any, metadata: Any) -> None:
        pass


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": ""}, "name must be 1-200 of"),
        ({"name": "has space"}, "name must be 1-200 of"),
        ({"name": "x" * 201}, "name must be 1-200 of"),
        ({"start_from": "yesterday"}, "start_from must be 'origin', 'current' or an event_number"),
        ({"start_from": -1}, "start_from must be"),
        ({"start_from": True}, "start_from must be"),
        ({"concurrency": 0}, "concurrency must be a positive integer"),
        ({"consistency": "sometimes"}, "consistency must be 'eventual' or 'strong'"),
        ({"on_poison": "drop"}, "on_poison must be 'park' or 'dead_letter'"),
        ({"max_attempts": 0}, "max_attempts must be 1 or more"),
        ({"subscribe_to": ""}, "subscribe_to must be 'all' or a stream id"),
        ({"partition_by": "amount"}, "is not a key source"),
        ({"partition_by": 42}, "partition_by must be a key source name or a function"),
        ({"partition_by": "correlation_id", "consistency": "strong"}, "strong consistency needs"),
    ],
)
def test_bad_options_are_refused_with_what_to_change(options: dict[str, Any], message: str) -> None:
    handler = type("Bad", (Valid,), options)
    with pytest.raises(ConfigurationError, match=message):
        validate_handler(handler)


def test_good_options_pass() -> None:
    for options in (
        {},
        {"start_from": "current", "concurrency": 8, "partition_by": "metadata.tenant"},
        {"start_from": 17, "consistency": "strong", "partition_by": "category"},
        {"on_poison": "dead_letter", "subscribe_to": "account-1", "static_membership": True},
    ):
        assert validate_handler(type("Good", (Valid,), options)) is not None


def test_a_handler_must_handle_something_and_a_projection_must_project() -> None:
    with pytest.raises(ConfigurationError, match="must define handle"):
        validate_handler(type("Idle", (EventHandler,), {"name": "idle"}))
    with pytest.raises(ConfigurationError, match="must define project"):
        validate_handler(type("Blank", (Projection,), {"name": "blank"}))
    assert validate_handler(type("Bulk", (Projection,), {"name": "bulk", "project_batch": lambda *_: None}))


def test_an_app_refuses_two_handlers_with_one_name() -> None:
    with pytest.raises(ConfigurationError, match=r"handler names must be unique.*\['valid'\]"):
        WorkerApp("bank", mapper=mapper, handlers=[Valid, type("Again", (Valid,), {})])
    app = WorkerApp("bank", mapper=mapper, handlers=[Valid])
    with pytest.raises(ConfigurationError, match=r"no handler named 'other'; this app has \['valid'\]"):
        app.handler("other")


def test_a_retry_cannot_wait_a_negative_time() -> None:
    with pytest.raises(ValueError, match="zero or more seconds"):
        Retry(delay=-1)


def test_upserts_insert_then_update_by_key(event_store: PostgresEventStore) -> None:
    table = sa.Table(
        "accounts",
        sa.MetaData(schema=event_store.config.schema),
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("owner", sa.Text),
        sa.Column("balance", sa.Integer),
    )
    engine = sa.create_engine(sqlalchemy_url(event_store.config.url), poolclass=sa.pool.NullPool)
    table.create(engine)
    with engine.begin() as conn:
        Projection.upsert(conn, table, {"id": "a", "owner": "ada", "balance": 1}, key=["id"])
        Projection.upsert(
            conn, table, {"id": "a", "owner": "bob", "balance": 2}, key=["id"], update=["balance"]
        )
        Projection.upsert_many(
            conn,
            table,
            [{"id": "b", "owner": "cy", "balance": 3}, {"id": "a", "owner": "di", "balance": 4}],
            key=["id"],
        )
        Projection.upsert(conn, table, {"id": "c"}, key=["id"])  # nothing to update: insert or leave
        Projection.upsert(conn, table, {"id": "c"}, key=["id"])
        rows = conn.execute(sa.select(table).order_by(table.c.id)).all()
    engine.dispose()
    assert [tuple(row) for row in rows] == [("a", "di", 4), ("b", "cy", 3), ("c", None, None)]
