"""OpenTelemetry: a span per dispatch and per execution, and the trace carried on in the events' metadata."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from eventstore import PostgresEventStore
from examples.bank.accounts import Deposit, InsufficientFunds, OpenAccount, Withdraw, accounts
from examples.bank.events import events
from tests.tidings.avro_support import SCHEMAS
from tidings import Application, EventMapper
from tidings.avro import AvroCodec, SchemaSet

MAPPER = EventMapper(AvroCodec(events, SchemaSet.load(SCHEMAS)))


def test_dispatch_and_execute_are_spans_and_the_events_carry_the_trace(
    event_store: PostgresEventStore, spans: InMemorySpanExporter
) -> None:
    app = Application(event_store, MAPPER, accounts)
    account = uuid.uuid4()
    app.dispatch(OpenAccount(account, "Ada"))

    finished = {span.name: span for span in spans.get_finished_spans()}
    dispatch, execute = finished["dispatch OpenAccount"], finished["execute BankAccount"]
    assert execute.parent is not None
    assert execute.parent.span_id == dispatch.context.span_id
    assert execute.attributes is not None
    assert execute.attributes["tidings.events"] == 1
    metadata = json.loads(event_store.read_stream_forward(f"account-{account}")[0].metadata)
    trace_id = metadata["traceparent"].split("-")[1]
    assert trace_id == f"{dispatch.context.trace_id:032x}", "the event continues the dispatch's trace"


def test_a_failed_dispatch_records_the_error_on_its_span(
    event_store: PostgresEventStore, spans: InMemorySpanExporter
) -> None:
    app = Application(event_store, MAPPER, accounts)
    account = uuid.uuid4()
    app.dispatch(OpenAccount(account, "Ada"))
    spans.clear()
    with pytest.raises(InsufficientFunds):
        app.dispatch(Withdraw(account, Decimal("1.00")))
    (dispatch,) = [s for s in spans.get_finished_spans() if s.name == "dispatch Withdraw"]
    assert dispatch.status.status_code == trace.StatusCode.ERROR
    assert any(event.name == "exception" for event in dispatch.events)
    app.dispatch(Deposit(account, Decimal("1.00")))
