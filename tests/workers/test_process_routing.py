"""Process manager routing, a pure decision: which instances an event reaches and what happens to each."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.process_routing import (
    Broadcast,
    Continue,
    ContinueStrict,
    ProcessAlreadyStarted,
    ProcessNotStarted,
    Route,
    Start,
    StartOrContinue,
    StartStrict,
    Stop,
    decide_routes,
    process_ids,
)

ids = st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=6)
lives = st.sets(st.sampled_from(["a", "b", "c", "d", "e"]))


@given(ids, lives, st.sampled_from([Start, StartOrContinue, Continue]))
def test_lenient_routes_start_what_is_missing_and_continue_what_exists(
    named: list[str], live: set[str], kind: type
) -> None:
    routes = decide_routes("pm", kind(named), live)
    assert [r.process_id for r in routes] == list(dict.fromkeys(named)), "each id once, in order"
    assert all(r.action == ("continue" if r.process_id in live else "start") for r in routes)


@given(ids, lives)
def test_strict_start_refuses_an_instance_that_exists(named: list[str], live: set[str]) -> None:
    if live & set(named):
        with pytest.raises(ProcessAlreadyStarted, match="already started"):
            decide_routes("pm", StartStrict(named), live)
    else:
        assert {r.action for r in decide_routes("pm", StartStrict(named), live)} == {"start"}


@given(ids, lives)
def test_strict_continue_refuses_an_instance_that_does_not_exist(named: list[str], live: set[str]) -> None:
    if set(named) - live:
        with pytest.raises(ProcessNotStarted, match="not started"):
            decide_routes("pm", ContinueStrict(named), live)
    else:
        assert {r.action for r in decide_routes("pm", ContinueStrict(named), live)} == {"continue"}


@given(ids, lives)
def test_stop_reaches_only_live_instances(named: list[str], live: set[str]) -> None:
    routes = decide_routes("pm", Stop(named), live)
    assert routes == [Route(i, "stop") for i in dict.fromkeys(named) if i in live]


@given(lives)
def test_broadcast_continues_every_live_instance_in_a_stable_order(live: set[str]) -> None:
    assert decide_routes("pm", Broadcast(), live) == [Route(i, "continue") for i in sorted(live)]


def test_no_interest_reaches_nothing_and_a_wrong_answer_says_what_to_return() -> None:
    assert decide_routes("pm", None, {"a"}) == []
    with pytest.raises(TypeError, match="answer Start, StartStrict"):
        decide_routes("pm", "t-1", set())  # type: ignore[arg-type]


def test_process_ids_take_text_and_uuids_and_refuse_anything_else() -> None:
    u = uuid.uuid4()
    assert process_ids(u) == (str(u),)
    assert process_ids(["x", u, "x"]) == ("x", str(u))
    for bad in ("", 7, [None], [b"x"]):
        with pytest.raises(TypeError, match="non-empty str or a UUID"):
            process_ids(bad)  # type: ignore[arg-type]
    assert Start("x") == Start(["x"])
    assert Start("x") != Continue("x")
