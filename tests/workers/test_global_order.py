"""The global-order merge (pure): whatever the routing and however partitions interleave, a handler sees
its topics' events exactly in event_number order, each once."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore.kafka_tail import parse_previous, previous_header
from workers.global_order import GlobalOrder, Ordered

Key = tuple[str, int]


def publish(routes: list[tuple[str, int]]) -> dict[Key, list[Ordered]]:
    """Events 1..N routed as ``routes`` says, with the headers the relay writes (as ``Relay._publish``)."""
    topics = sorted({topic for topic, _ in routes})
    previous = dict.fromkeys(topics, 0)
    partitions: dict[Key, list[Ordered]] = {}
    for number, (topic, partition) in enumerate(routes, start=1):
        header = parse_previous(previous_header(previous).encode())
        partitions.setdefault((topic, partition), []).append(Ordered(number, header, number))
        previous[topic] = number
    return partitions


routes = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 3)), max_size=80)


@settings(max_examples=300)
@given(routes, st.sets(st.sampled_from(["a", "b", "c"]), min_size=1), st.randoms(use_true_random=False))
def test_any_interleaving_is_released_in_global_order(
    routes: list[tuple[str, int]], subscribed: set[str], rng: random.Random
) -> None:
    partitions = {k: list(v) for k, v in publish(routes).items() if k[0] in subscribed}
    merge = GlobalOrder(subscribed, last=0)
    seen: list[int] = []
    # Deliver in a random interleaving that keeps each partition's order, releasing as Kafka would feed.
    while any(partitions.values()):
        key = rng.choice([k for k, items in partitions.items() if items])
        for _ in range(rng.randint(1, 3)):
            if partitions[key]:
                merge.add(key, partitions[key].pop(0))
        seen.extend(payload for _, payload in merge.release())
    expected = [n for n, (topic, _) in enumerate(routes, start=1) if topic in subscribed]
    assert seen == expected
    assert merge.waiting() == 0


def test_a_later_event_waits_for_the_earlier_one_on_another_partition() -> None:
    merge = GlobalOrder({"t"}, last=0)
    merge.add(("t", 1), Ordered(2, {"t": 1}, "second"))
    assert merge.release() == []
    merge.add(("t", 0), Ordered(1, {"t": 0}, "first"))
    assert merge.release() == [(("t", 0), "first"), (("t", 1), "second")]


def test_events_routed_elsewhere_leave_no_gap_to_wait_for() -> None:
    # Events 1 and 3 went to topic "other": the handler of "t" sees 2 then 4 at once.
    merge = GlobalOrder({"t"}, last=0)
    merge.add(("t", 0), Ordered(4, {"t": 2, "other": 3}, 4))
    merge.add(("t", 1), Ordered(2, {"t": 0, "other": 1}, 2))
    assert [payload for _, payload in merge.release()] == [2, 4]


def test_redeliveries_and_unreadable_messages_pass_at_once() -> None:
    merge = GlobalOrder({"t"}, last=10)
    merge.add(("t", 0), Ordered(9, {"t": 8}, "old"))
    merge.add(("t", 1), Ordered(None, None, "junk"))
    assert sorted(payload for _, payload in merge.release()) == ["junk", "old"]
    assert merge.last == 10


@settings(max_examples=300)
@given(routes, st.randoms(use_true_random=False))
def test_when_nothing_can_be_released_the_next_event_is_on_a_partition_without_a_head(
    routes: list[tuple[str, int]], rng: random.Random
) -> None:
    """What flow control relies on (issue 20, case 1): a partition with messages waiting in the merge
    never holds the event the merge waits for, so pausing it cannot starve the merge."""
    partitions = {k: list(v) for k, v in publish(routes).items()}
    merge = GlobalOrder({"a", "b", "c"}, last=0)
    merge.assign(partitions)
    while any(partitions.values()):
        key = rng.choice([k for k, items in partitions.items() if items])
        merge.add(key, partitions[key].pop(0))
        if not merge.release() and merge.waiting():
            following = min(
                ((k, items[0].event_number or 0) for k, items in partitions.items() if items),
                key=lambda found: found[1],
            )
            assert following[0] in merge.empty()
            assert following[0] not in merge.held()


def test_a_foreign_message_moves_nothing() -> None:
    merge = GlobalOrder({"t"}, last=4)
    merge.add(("t", 0), Ordered(None, None, "foreign"))  # the runner strips a foreign message's claims
    merge.add(("t", 1), Ordered(6, {"t": 5}, "six"))
    assert merge.release() == [(("t", 0), "foreign")]
    assert merge.last == 4
    merge.add(("t", 0), Ordered(5, {"t": 4}, "five"))
    assert [payload for _, payload in merge.release()] == ["five", "six"]


def test_without_headers_the_oldest_head_goes_once_every_partition_has_one() -> None:
    merge = GlobalOrder({"t"}, last=0)
    merge.assign([("t", 0), ("t", 1)])
    merge.add(("t", 1), Ordered(5, None, 5))
    assert merge.release() == []
    assert merge.release_oldest() == []  # partition 0 may still hold an older event
    merge.add(("t", 0), Ordered(3, None, 3))
    assert merge.release_oldest() == [(("t", 0), 3)]
    assert merge.release_oldest() == []  # partition 0 is empty again


@given(st.dictionaries(st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True), st.integers(0, 2**62)))
def test_the_header_round_trips(previous: dict[str, int]) -> None:
    assert parse_previous(previous_header(previous).encode()) == previous


def test_a_damaged_header_is_no_header() -> None:
    for damaged in (b"t=x", b"=3", b"t3", b"t=1,,u"):
        assert parse_previous(damaged) is None, damaged
    assert parse_previous(None) is None
