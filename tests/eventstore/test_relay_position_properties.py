"""The relay's trust model of the tail, as pure logic: whatever else a topic holds, the relay resumes
exactly after the last event it published, or refuses; it never resumes anywhere else.

A model store numbers events 1..N; the relay published 1..P of them across partitions and topics; then
anything may be produced into the partitions (no identity, made-up numbers, reused numbers, damaged
headers, other stores). ``classify`` + ``decide_resume`` must find P.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from eventstore.kafka_tail import Tail, TailMessage, classify
from eventstore.relay_position import RelayIdentity, StoreFacts, decide_resume
from eventstore.relay_problems import ForeignMessages, KafkaAheadOfStore, TailMismatch, TailUnconfirmed

STORE = "3f1c1c64-5a8b-4bb6-9a53-2f3d8c1f2a10"
OTHER = "9a1b2c3d-0000-4000-8000-123456789abc"
TOPICS = ["app.events", "app.audit"]


def _ids(count: int, seed: int) -> dict[int, str]:
    return {n: str(uuid.UUID(int=seed * 1_000_003 + n)) for n in range(1, count + 1)}


def _confirm(held: dict[int, str]):  # type: ignore[no-untyped-def]
    def confirm(pairs: Sequence[tuple[int, str]]) -> set[tuple[int, str]]:
        return {(n, i) for n, i in pairs if held.get(n) == i}

    return confirm


@st.composite
def histories(draw: st.DrawFn) -> tuple[dict[int, str], int, list[list[TailMessage]], dict[str, int]]:
    """A store's ids, the published prefix P, the partitions as a relay would have filled them, and the
    last event_number per topic."""
    total = draw(st.integers(0, 40))
    published = draw(st.integers(0, total))
    ids = _ids(total, draw(st.integers(0, 1000)))
    places = [(t, p) for t in TOPICS for p in range(draw(st.integers(1, 3)))]
    partitions: dict[tuple[str, int], list[TailMessage]] = {place: [] for place in places}
    last_on_topic: dict[str, int] = {}
    legacy = draw(st.booleans())  # written by an earlier release: no identity headers
    for number in range(1, published + 1):
        topic, partition = draw(st.sampled_from(places))
        messages = partitions[(topic, partition)]
        messages.append(
            TailMessage(
                topic,
                partition,
                len(messages),
                number,
                ids[number],
                None if legacy else STORE,
                None if legacy else "default",
                previous={t: last_on_topic.get(t, 0) for t in TOPICS},
            )
        )
        last_on_topic[topic] = number
    return ids, published, [partitions[place] for place in places], last_on_topic


def _junk(
    draw: st.DrawFn,
    topic: str,
    partition: int,
    offset: int,
    ids: dict[int, str],
    before: list[TailMessage] = (),  # type: ignore[assignment]
) -> TailMessage:
    kinds = ["bytes", "huge", "reused number", "damaged identity", "copied id", "own, damaged", "own, huge"]
    kind = draw(st.sampled_from([*kinds, "own copy"] if before else kinds))
    if kind == "own copy":
        # A replayed copy of one of the relay's own earlier messages of this partition, byte for byte.
        original = draw(st.sampled_from(before))
        return _at(original, offset)
    if kind in ("own, damaged", "own, huge"):
        number = None if kind == "own, damaged" else draw(st.integers(2**63, 2**70))
        return TailMessage(topic, partition, offset, number, str(uuid.uuid4()), STORE, "default")
    number: int | None = None
    event_id: str | None = None
    if kind == "huge":
        number, event_id = draw(st.integers(10**6, 2**70)), str(uuid.uuid4())
    elif kind == "reused number":
        number, event_id = draw(st.integers(1, 50)), str(uuid.uuid4())
    elif kind == "copied id" and ids:
        # A replayed copy of a real event under another number.
        real = draw(st.sampled_from(sorted(ids)))
        number, event_id = real + draw(st.integers(1, 5)), ids[real]
    elif kind == "damaged identity":
        number = draw(st.integers(0, 10**9))
    return TailMessage(topic, partition, offset, number, event_id, None, None)


@st.composite
def with_junk(draw: st.DrawFn) -> tuple[dict[int, str], int, list[list[TailMessage]], dict[str, int]]:
    ids, published, partitions, last_on_topic = draw(histories())
    mixed = []
    for messages in partitions:
        topic, partition = (messages[0].topic, messages[0].partition) if messages else (TOPICS[0], 99)
        out: list[TailMessage] = []
        for message in messages:
            for _ in range(draw(st.integers(0, 2))):
                out.append(_junk(draw, topic, partition, len(out), ids, [m for m in out if m.store]))
            out.append(_at(message, len(out)))
        for _ in range(draw(st.integers(0, 4))):
            out.append(_junk(draw, topic, partition, len(out), ids, [m for m in out if m.store]))
        mixed.append(out)
    return ids, published, mixed, last_on_topic


def _at(message: TailMessage, offset: int) -> TailMessage:
    return TailMessage(
        message.topic,
        message.partition,
        offset,
        message.event_number,
        message.event_id,
        message.store,
        message.relay,
        message.epoch,
        message.previous,
    )


def _tail(partitions: list[list[TailMessage]], ids: dict[int, str], ever_written: bool = True) -> Tail:
    found = classify(
        partitions, [True] * len(partitions), store=STORE, relay="default", confirm=_confirm(ids)
    )
    newest = [m for r in found if r is not None for m in r.messages]
    foreign = [m for r in found if r is not None for m in r.foreign]
    ignored = sum(r.ignored for r in found if r is not None)
    return Tail(newest, foreign, ignored, ever_written and any(partitions))


@settings(max_examples=300, deadline=None)
@given(with_junk())
def test_junk_never_moves_the_resume_point(
    case: tuple[dict[int, str], int, list[list[TailMessage]], dict[str, int]],
) -> None:
    ids, published, partitions, last_on_topic = case
    tail = _tail(partitions, ids)
    facts = StoreFacts(len(ids), ids)
    resume = decide_resume(tail, RelayIdentity(STORE, "default"), facts, recorded=published, topics=TOPICS)
    assert resume.position == published
    assert resume.previous == {topic: last_on_topic.get(topic, 0) for topic in TOPICS}
    assert resume.republish_from is None


@settings(max_examples=200, deadline=None)
@given(histories(), st.integers(1, 5))
def test_another_stores_message_after_the_relays_is_refused_unless_ignored(
    case: tuple[dict[int, str], int, list[list[TailMessage]], dict[str, int]], number: int
) -> None:
    ids, published, partitions, _ = case
    target = partitions[0]
    topic, partition = TOPICS[0], 0
    target.append(TailMessage(topic, partition, len(target), number, str(uuid.uuid4()), OTHER, "default"))
    tail = _tail(partitions, ids)
    facts = StoreFacts(len(ids), ids)
    with pytest.raises(ForeignMessages, match=OTHER):
        decide_resume(tail, RelayIdentity(STORE, "default"), facts, recorded=published, topics=TOPICS)
    resume = decide_resume(
        tail, RelayIdentity(STORE, "default"), facts, recorded=published, topics=TOPICS, ignore_stores={OTHER}
    )
    assert resume.position == published


@settings(max_examples=200, deadline=None)
@given(histories(), st.data())
def test_a_store_that_lost_its_tail_is_never_resumed_over(
    case: tuple[dict[int, str], int, list[list[TailMessage]], dict[str, int]], data: st.DataObject
) -> None:
    ids, published, partitions, _ = case
    # Something published, by a relay that marks its messages (an earlier release's are confirmed
    # through the store only, so a store that lost them simply does not confirm them).
    assume(published > 0 and any(m.store is not None for p in partitions for m in p))
    kept = data.draw(st.integers(0, published - 1), label="events the store kept")
    renumbered = data.draw(st.integers(0, 10), label="new events under reused numbers")
    held = {n: i for n, i in ids.items() if n <= kept}
    held.update({kept + k: str(uuid.uuid4()) for k in range(1, renumbered + 1)})
    tail = _tail(partitions, held)
    facts = StoreFacts(kept + renumbered, {n: held[n] for n in held})
    with pytest.raises((KafkaAheadOfStore, TailMismatch)):
        decide_resume(tail, RelayIdentity(STORE, "default"), facts, recorded=published, topics=TOPICS)


def test_an_emptied_topic_with_a_recorded_position_is_not_guessed_over() -> None:
    tail = Tail([], [], 3, ever_written=True)
    with pytest.raises(TailUnconfirmed, match="resume-after 12"):
        decide_resume(tail, RelayIdentity(STORE, "default"), StoreFacts(20, {}), recorded=12, topics=TOPICS)
    # After the operator's decision (a new epoch starting at 12), 12 is where it goes on.
    resume = decide_resume(
        tail,
        RelayIdentity(STORE, "default", epoch=1, epoch_start=12),
        StoreFacts(20, {}),
        recorded=12,
        topics=TOPICS,
    )
    assert resume.position == 12


def test_kafka_holding_less_than_recorded_is_republished_from_what_it_confirms() -> None:
    ids = _ids(10, 1)
    newest = [TailMessage(TOPICS[0], 0, 5, 6, ids[6], STORE, "default")]
    resume = decide_resume(
        Tail(newest, [], 0, True),
        RelayIdentity(STORE, "default"),
        StoreFacts(10, ids),
        recorded=9,
        topics=TOPICS,
    )
    assert (resume.position, resume.republish_from) == (6, 6)


def test_messages_of_an_older_epoch_say_nothing_about_the_position() -> None:
    ids = _ids(10, 2)
    # Published up to 9 before a lost tail; the operator said "go on after 4".
    old = [TailMessage(TOPICS[0], 0, 8, 9, str(uuid.uuid4()), STORE, "default", 0)]
    resume = decide_resume(
        Tail(old, [], 0, True),
        RelayIdentity(STORE, "default", 1, 4),
        StoreFacts(6, ids),
        recorded=4,
        topics=TOPICS,
    )
    assert resume.position == 4
    assert resume.previous[TOPICS[0]] == 9, "the header chain goes on from what the topic really holds"


@settings(max_examples=300, deadline=None)
@given(histories(), st.data())
def test_a_topic_that_lost_its_end_is_published_again_from_before_the_loss(
    case: tuple[dict[int, str], int, list[list[TailMessage]], dict[str, int]], data: st.DataObject
) -> None:
    # A topic recreated, or restored from an older backup, while the relay's other topic kept its events.
    ids, published, partitions, _ = case
    lost_topic = data.draw(st.sampled_from(TOPICS), label="the topic that lost its end")
    kept = data.draw(st.integers(0, published), label="the last event it kept")
    remaining = [[m for m in p if m.topic != lost_topic or (m.event_number or 0) <= kept] for p in partitions]
    tail = _tail(remaining, ids)
    facts = StoreFacts(len(ids), ids)
    resume = decide_resume(tail, RelayIdentity(STORE, "default"), facts, recorded=published, topics=TOPICS)
    present = {m.event_number for p in remaining for m in p}
    missing = [n for n in range(1, resume.position + 1) if n not in present]
    assert not missing, f"resumes after {resume.position} though events {missing} are not in Kafka"
