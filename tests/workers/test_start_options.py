"""Options given at start (``configured``, ``with_overrides``, ``--set``): read, checked as class
attributes are, and refused with a typed error saying what to change; never ignored."""

from __future__ import annotations

import os
from typing import Any

import pytest

from eventstore.errors import ConfigurationError
from tests.workers.cli_support import tidings
from tests.workers.worker_support import mapper
from tidings.router import Router
from workers import EventHandler, EventMetadata, ProcessManager, WorkerApp
from workers.delivery import delivery_of
from workers.handler import InvalidOverride, start_options, validate_handler
from workers.overrides import parse_overrides


class Emails(EventHandler):
    name = "bank.emails"

    def handle(self, event: Any, metadata: EventMetadata) -> None:
        pass


class Ledger(EventHandler):
    name = "bank.ledger"
    concurrency = 2

    def handle(self, event: Any, metadata: EventMetadata) -> None:
        pass


class Bonuses(ProcessManager):
    name = "bank.bonuses"


# --- configured: the one mechanism ----------------------------------------------------------------


def test_configured_gives_a_subclass_with_the_options_and_leaves_the_class_as_written() -> None:
    made = Emails.configured(start_from="current", concurrency=4, consistency="strong")
    assert issubclass(made, Emails)
    assert made is not Emails
    assert (made.name, made.__qualname__) == (Emails.name, Emails.__qualname__)
    assert (made.start_from, made.concurrency, made.consistency) == ("current", 4, "strong")
    assert made.given_at_start == {"start_from": "current", "concurrency": 4, "consistency": "strong"}
    assert (Emails.start_from, Emails.concurrency, Emails.given_at_start) == ("origin", 1, {})
    # Configured again, the later options add to the earlier ones.
    again = made.configured(start_from=17)
    assert (again.start_from, again.concurrency, again.given_at_start["start_from"]) == (17, 4, 17)


def test_state_given_at_start_is_each_instances_own_copy() -> None:
    made = Emails.configured(state={"sent": []})
    first, second = made(0), made(1)
    first.state["sent"].append("ada")
    assert second.state == {"sent": []}
    assert Emails(0).state is None


def test_a_partition_by_function_given_at_start_is_called_with_the_event_and_metadata() -> None:
    made = Emails.configured(partition_by=lambda event, metadata: f"{event}-{metadata}", ordering="per_key")
    partition_by: Any = made(0).partition_by
    assert partition_by("e", "m") == "e-m"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"start_from": "yesterday"}, "start_from must be 'origin', 'current' or an event_number >= 0"),
        ({"start_from": -1}, "start_from must be"),
        ({"concurrency": 0}, "concurrency must be a positive integer, got 0"),
        ({"concurrency": "many"}, "concurrency must be a positive integer, got 'many'"),
        ({"consistency": "sometimes"}, "consistency must be 'eventual' or 'strong'"),
        ({"on_poison": "drop"}, "on_poison must be 'park' or 'dead_letter'"),
        ({"max_attempts": 0}, "max_attempts must be 1 or more"),
        ({"static_membership": "maybe"}, "static_membership must be True or False"),
        ({"partition_by": "amount"}, "is not a key source"),
        ({"ordering": "global", "concurrency": 3}, "global order runs one consumer in one lane"),
    ],
)
def test_values_are_checked_as_class_attributes_are(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidOverride, match=message) as raised:
        Emails.configured(**options)
    assert raised.value.args[0].startswith("handler 'bank.emails' given ")
    # The same rule refuses the same value written in the class.
    written: type[EventHandler] = type("Written", (Emails,), options)
    with pytest.raises(ConfigurationError, match=message):
        validate_handler(written)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "other"}, "has no option 'name' to give at start"),
        ({"topics": ["t"]}, "has no option 'topics' to give at start"),
        ({"concurency": 2}, "has no option 'concurency' to give at start; it takes start_from, "),
        ({"idle_timeout": 5.0}, "has no option 'idle_timeout'"),
    ],
)
def test_an_option_that_cannot_be_given_at_start_is_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidOverride, match=message):
        Emails.configured(**options)


def test_a_process_manager_takes_its_own_options_and_no_state() -> None:
    assert "idle_timeout" in start_options(Bonuses)
    assert "state" not in start_options(Bonuses)
    made = Bonuses.configured(idle_timeout=30.0, event_timeout=5, start_from="current")
    assert (made.idle_timeout, made.event_timeout) == (30.0, 5)
    with pytest.raises(InvalidOverride, match="idle_timeout must be None or seconds > 0, got 0"):
        Bonuses.configured(idle_timeout=0)
    with pytest.raises(InvalidOverride, match="has no option 'state'"):
        Bonuses.configured(state={})


# --- the command line's pairs ---------------------------------------------------------------------


def test_set_pairs_are_read_as_each_options_type() -> None:
    pairs = [
        "bank.emails.start_from=current",
        "bank.emails.concurrency=4",
        "bank.ledger.start_from=1234",
        "bank.ledger.static_membership=yes",
        "bank.ledger.partition_by=metadata.tenant",
        "bank.ledger.ordering=none",
        "bank.bonuses.idle_timeout=2.5",
        "bank.bonuses.event_timeout=none",
        "bank.emails.concurrency=8",  # a later pair wins
    ]
    assert parse_overrides(pairs) == {
        "bank.emails": {"start_from": "current", "concurrency": 8},
        "bank.ledger": {
            "start_from": 1234,
            "static_membership": True,
            "partition_by": "metadata.tenant",
            "ordering": None,
        },
        "bank.bonuses": {"idle_timeout": 2.5, "event_timeout": None},
    }


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        (
            "emails",
            r"--set takes HANDLER.OPTION=VALUE \(e.g. --set welcome-emails.start_from=current\), "
            r"got 'emails'",
        ),
        ("emails=current", "--set takes HANDLER.OPTION=VALUE"),
        (".start_from=current", "--set takes HANDLER.OPTION=VALUE"),
        ("emails.=current", "--set takes HANDLER.OPTION=VALUE"),
        ("emails.start_form=current", "'start_form' is not an option a worker can be given at start"),
        ("emails.state={}", r"give it in Python: Handler.configured\(state=...\)"),
        ("emails.name=x", "'name' is not an option"),
    ],
)
def test_a_malformed_pair_is_refused_saying_the_form(pair: str, message: str) -> None:
    with pytest.raises(InvalidOverride, match=message):
        parse_overrides([pair])


def test_text_that_is_not_the_options_type_reaches_the_check_and_is_refused_there() -> None:
    app = WorkerApp("bank", mapper, handlers=[Emails])
    with pytest.raises(InvalidOverride, match="concurrency must be a positive integer, got 'four'"):
        app.with_overrides(parse_overrides(["bank.emails.concurrency=four"]))
    with pytest.raises(InvalidOverride, match=r"start_from must be .* got -5"):
        app.with_overrides(parse_overrides(["bank.emails.start_from=-5"]))


# --- by name, in an app ---------------------------------------------------------------------------


def test_with_overrides_gives_each_named_handler_its_own() -> None:
    app = WorkerApp("bank", mapper, handlers=[Emails, Ledger, Bonuses], router=Router())
    made = app.with_overrides({"bank.emails": {"start_from": "current"}, "bonuses": {"idle_timeout": 9.0}})
    emails, ledger, bonuses = made.handlers
    assert (emails.start_from, ledger, bonuses.idle_timeout) == ("current", Ledger, 9.0)  # type: ignore[attr-defined]
    assert app.handlers[0] is Emails  # the app itself is unchanged
    assert made.handler("bank.emails") is emails


def test_an_unknown_or_ambiguous_handler_name_is_refused_with_the_apps_handlers() -> None:
    app = WorkerApp("bank", mapper, handlers=[Emails, Ledger])
    with pytest.raises(InvalidOverride) as raised:
        app.with_overrides({"nope": {"start_from": "current"}})
    assert str(raised.value) == (
        "cannot give nope.start_from=current at start: no handler is named 'nope' in the app 'bank'; "
        "its handlers: ['bank.emails', 'bank.ledger']"
    )
    twice = WorkerApp("bank", mapper, handlers=[Emails, type("Shop", (Emails,), {"name": "shop.emails"})])
    with pytest.raises(InvalidOverride, match="several handlers' names end with 'emails'"):
        twice.with_overrides({"emails": {"concurrency": 2}})


def test_metadata_carries_the_application_it_was_given() -> None:
    headers = [
        ("event_id", b"2b1e3f3e-8a4b-4c1e-9d7a-000000000001"),
        ("event_type", b"tests.Noted"),
        ("event_number", b"1"),
        ("stream_id", b"s"),
        ("stream_version", b"0"),
        ("created_at", b"2026-01-01T00:00:00+00:00"),
    ]
    delivery = delivery_of("bank.events", 0, 0, b"s", b"{}", headers)
    metadata = EventMetadata(delivery, "bank.emails", {}, None, "bank")
    assert (metadata.application, metadata.handler_name) == ("bank", "bank.emails")
    assert "application='bank'" in repr(metadata)


# --- tidings worker: a mistake exits 2 before anything runs ---------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "example"], "error: --set takes HANDLER.OPTION=VALUE"),
        (["--set", "example.start_form=current"], "'start_form' is not an option a worker can be given"),
        (["--set", "nope.start_from=current"], "no handler is named 'nope' in the app 'example'"),
        (["--set", "example.concurrency=0"], "handler 'example' given concurrency=0 at start"),
        (["--set", "example.start_from=soon"], "start_from must be 'origin', 'current' or an event_number"),
        (
            ["--handler", "example", "--set", "other.concurrency=2"],
            "--set names 'other', which this worker does not run (--handler example)",
        ),
    ],
)
def test_the_worker_refuses_a_bad_set_with_exit_2(args: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    result = tidings("worker", "tests.workers.apps:example", *args, env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
