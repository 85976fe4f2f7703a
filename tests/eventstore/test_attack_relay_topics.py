"""Attacks on the relay through its topics and its operator (issue 19): topics that lose their end,
topics deleted under a running relay, a limit lowered under a large backlog, two relays on one topic,
and an operator's resume-after racing a backlog. Real PostgreSQL, real Kafka.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections import Counter

from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from eventstore import ANY, EventData, PostgresEventStore
from eventstore.kafka_tail import EPOCH_HEADER, PREVIOUS_HEADER
from eventstore.records import RecordedEvent
from eventstore.relay import Relay, RelayConfig, relay_status, resume_after
from eventstore.routing import Route, Routing
from tests.eventstore.relay_support import (
    Seen,
    append_events,
    assert_exactly_once_in_order,
    read_committed,
    read_to_end,
    relay_verdict,
    set_topic_limit,
    start_relay,
    wait_until,
)
from tidings.pytest_plugin import KafkaNamespace

RETRY = 0.2


def _status_event(store: PostgresEventStore) -> int | None:
    return next(s.problem_event for s in relay_status(store) if s.name == "default")


def _twice(seen: list[Seen]) -> list[int]:
    counts = Counter(m.headers.get("event_id") for m in seen)
    return sorted({m.event_number for m in seen if counts[m.headers.get("event_id")] > 1})


def _two_topics(namespace: KafkaNamespace) -> tuple[str, str, Routing]:
    main, audit = namespace.topic("events"), namespace.topic("audit")
    return main, audit, Routing(main, by_event_type={"Audit": Route(topic=audit)})


def _append_audit_then_main(store: PostgresEventStore) -> list[uuid.UUID]:
    """Three events to the audit topic (numbers 1..3), then six to the main one (4..9)."""
    ids = []
    for n in range(3):
        event = EventData("Audit", b"%d" % n, schema_id="test:1")
        store.append_to_stream("audit-0", ANY, [event])
        ids.append(event.event_id)
    return ids + append_events(store, streams=3, per_stream=2)


def test_an_audit_topic_emptied_by_retention_does_not_make_a_restarted_relay_publish_the_main_one_again(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    # Two topics, one of them rarely written (an audit topic with a week's retention): retention empties
    # it while the main topic keeps its events. The relay's newest message says the audit topic had
    # event 3; the audit topic now holds nothing. Nothing was lost that the relay could give back to
    # consumers of the main topic, yet publishing "again from the last point every topic holds" (0)
    # sends every event of the main topic a second time, silently.
    main, audit, routing = _two_topics(kafka_namespace)
    config = RelayConfig(kafka_namespace.bootstrap_servers, routing=routing, problem_retry=RETRY)
    appended = _append_audit_then_main(event_store)
    first = start_relay(relays, event_store, config)
    wait_until(lambda: first.last_published == 9, 30, "the first relay")
    first.stop()
    admin = AdminClient({"bootstrap.servers": kafka_namespace.bootstrap_servers})
    end = max(m.offset for m in read_to_end(kafka_namespace.bootstrap_servers, [audit])) + 2
    for future in admin.delete_records([TopicPartition(audit, 0, end)]).values():
        future.result(30)
    appended += append_events(event_store, streams=3, per_stream=1, prefix="later")

    second = start_relay(relays, event_store, config)
    wait_until(
        lambda: second.last_published == len(appended) or relay_verdict(event_store) not in ("ok", None),
        30,
        "the restarted relay",
    )
    seen = read_to_end(kafka_namespace.bootstrap_servers, [main])
    assert not _twice(seen), f"the main topic got event_numbers {_twice(seen)} a second time"


def test_a_forged_previous_header_naming_another_topic_does_not_make_a_restarted_relay_publish_again(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    # A copy of the relay's newest message whose tidings.previous claims the audit topic had event 999.
    main, audit, routing = _two_topics(kafka_namespace)
    config = RelayConfig(kafka_namespace.bootstrap_servers, routing=routing, problem_retry=RETRY)
    appended = _append_audit_then_main(event_store)
    first = start_relay(relays, event_store, config)
    wait_until(lambda: first.last_published == 9, 30, "the first relay")
    first.stop()
    newest = max(read_to_end(kafka_namespace.bootstrap_servers, [main]), key=lambda m: m.offset)
    headers: list[tuple[str, str | bytes | None]] = [
        (k, v) for k, v in newest.headers.items() if k != PREVIOUS_HEADER
    ]
    headers.append((PREVIOUS_HEADER, f"{main}=8,{audit}=999"))
    producer = Producer({"bootstrap.servers": kafka_namespace.bootstrap_servers})
    producer.produce(main, newest.value, newest.key, partition=newest.partition, headers=headers)
    assert producer.flush(30) == 0
    appended += append_events(event_store, streams=3, per_stream=1, prefix="later")

    second = start_relay(relays, event_store, config)
    wait_until(
        lambda: second.last_published == len(appended) or relay_verdict(event_store) not in ("ok", None),
        30,
        "the restarted relay",
    )
    seen = read_to_end(kafka_namespace.bootstrap_servers, [main])
    copies = [m for m in seen if m.headers.get(PREVIOUS_HEADER, b"").endswith(b"=999")]
    relayed = [m for m in seen if m not in copies]
    assert not _twice(relayed), f"the main topic got event_numbers {_twice(relayed)} a second time"


def test_a_topic_deleted_and_recreated_under_a_running_relay_ends_up_holding_every_event(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    # docs/relay.md: "Topics recreated ... the relay publishes the store's events again from the last
    # point every topic holds". Recreated under a running relay, the topic gets only what came after.
    topic = kafka_namespace.topic("events")
    config = RelayConfig(kafka_namespace.bootstrap_servers, routing=Routing(topic), problem_retry=RETRY)
    appended = append_events(event_store, streams=3, per_stream=2)
    relay = start_relay(relays, event_store, config)
    wait_until(lambda: relay.last_published == 6, 30, "the relay")
    admin = AdminClient({"bootstrap.servers": kafka_namespace.bootstrap_servers})
    for future in admin.delete_topics([topic], operation_timeout=30).values():
        future.result(30)
    wait_until(lambda: topic not in admin.list_topics(timeout=10).topics, 30, "the topic deleted")
    for future in admin.create_topics(
        [NewTopic(topic, 1, 1, config={"max.message.bytes": "4194304"})], operation_timeout=30
    ).values():
        future.result(30)
    appended += append_events(event_store, streams=3, per_stream=1, prefix="after")
    wait_until(lambda: relay.last_published == len(appended), 60, "the relay, on the recreated topic")
    relay.stop()
    restarted = start_relay(relays, event_store, config)
    wait_until(lambda: restarted.leading.is_set() and relay_verdict(event_store) is not None, 30, "restart")
    wait_until(
        lambda: (
            len({m.event_id for m in read_to_end(kafka_namespace.bootstrap_servers, [topic])})
            == len(appended)
        ),
        30,
        "every event on the recreated topic",
    )


def _gate_key(gate: threading.Event):  # type: ignore[no-untyped-def]
    def key(event: RecordedEvent) -> str:
        if event.event_type == "Gate" and gate.is_set():
            raise RuntimeError("the gate is closed")
        return event.stream_id

    return key


def test_a_large_backlog_narrowed_around_a_refused_event_in_its_middle_publishes_exactly_up_to_it(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    # Guarantee 3: a backlog of hundreds of events reaches the relay as one batch (held back by a
    # routing that raises, then fixed); the topic's limit was lowered meanwhile so that one event in the
    # middle is refused and record batches of small events come close to the limit too.
    topic = kafka_namespace.topic("events")
    gate = threading.Event()
    config = RelayConfig(
        kafka_namespace.bootstrap_servers,
        routing=Routing(topic, key=_gate_key(gate)),
        problem_retry=RETRY,
        partitions=3,
        compression="none",
    )
    before = append_events(event_store, streams=3, per_stream=2)
    relay = start_relay(relays, event_store, config)
    wait_until(lambda: relay.last_published == 6, 30, "the relay")
    gate.set()
    gate_event = EventData("Gate", b"g", schema_id="test:1")
    event_store.append_to_stream("account-0", ANY, [gate_event])
    wait_until(lambda: relay_verdict(event_store) == "blocked", 30, "blocked at the gate")
    head = append_events(event_store, streams=7, per_stream=30, prefix="head")
    big = EventData("Big", os.urandom(100_000), schema_id="test:1")
    event_store.append_to_stream("head-3", ANY, [big])
    big_number = 6 + 1 + len(head) + 1
    tail = append_events(event_store, streams=7, per_stream=30, prefix="tail")
    set_topic_limit(kafka_namespace.bootstrap_servers, topic, 60_000)
    gate.clear()

    wait_until(
        lambda: relay_verdict(event_store) == "blocked" and _status_event(event_store) == big_number,
        90,
        "blocked at the big event",
    )
    assert relay.last_published == big_number - 1
    published = [*before, gate_event.event_id, *head]
    # What was committed before the refused event is readable (the partitions' end is looked at after
    # the limit is raised: the test below).
    seen = read_committed(
        kafka_namespace.bootstrap_servers,
        [topic],
        kafka_namespace.group("check"),
        lambda seen: len(seen) >= len(published),
    )
    assert_exactly_once_in_order(seen, published)

    set_topic_limit(kafka_namespace.bootstrap_servers, topic, 4_194_304)
    everything = [*published, big.event_id, *tail]
    wait_until(lambda: relay.last_published == len(everything), 90, "the relay, once the limit is raised")
    assert_exactly_once_in_order(read_to_end(kafka_namespace.bootstrap_servers, [topic]), everything)
    wait_until(lambda: relay_verdict(event_store) == "ok", 30, "the verdict cleared")


def test_two_relays_with_different_names_started_together_on_one_topic_do_not_both_publish(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    # Two relay names of one store on one topic (a copy-pasted deployment with --name changed): each one
    # resumes from an empty tail, so neither sees the other; consumers get every event twice.
    topic = kafka_namespace.topic("events")
    appended = append_events(event_store, streams=3, per_stream=3)
    configs = [
        RelayConfig(kafka_namespace.bootstrap_servers, routing=Routing(topic), name=name, problem_retry=RETRY)
        for name in ("default", "second")
    ]
    a, b = (start_relay(relays, event_store, config) for config in configs)
    wait_until(
        lambda: all(
            r.last_published == len(appended) or relay_verdict(event_store, n) not in ("ok", None)
            for r, n in ((a, "default"), (b, "second"))
        ),
        30,
        "both relays",
    )
    more = append_events(event_store, streams=3, per_stream=1, prefix="more")
    # Two relays that find each other's messages both stop and say why (which history is right is the
    # operator's call: docs/relay.md); a relay that found none goes on.
    wait_until(
        lambda: (
            a.last_published == len(appended) + len(more)
            or b.last_published == len(appended) + len(more)
            or "ok" not in {relay_verdict(event_store, "default"), relay_verdict(event_store, "second")}
        ),
        30,
        "one relay goes on, or both say why they stopped",
    )
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    verdicts = {relay_verdict(event_store, "default"), relay_verdict(event_store, "second")}
    assert not _twice(seen) or verdicts != {"ok"}, (
        f"event_numbers {_twice(seen)} published twice, and both relays say ok"
    )


def test_resume_after_racing_a_backlog_then_restarts_publish_each_event_after_it_once(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    # Guarantee 4: the operator's decision, taken while the relay is publishing a backlog in small
    # batches, holds across many restarts: from the decision on, every event after N exactly once.
    topic = kafka_namespace.topic("events")
    config = RelayConfig(
        kafka_namespace.bootstrap_servers,
        routing=Routing(topic),
        problem_retry=RETRY,
        batch_size=5,
        partitions=3,
    )
    appended = append_events(event_store, streams=10, per_stream=60)  # 600 events
    relay = start_relay(relays, event_store, config)
    wait_until(lambda: relay.last_published >= 100, 60, "the relay, into the backlog")
    resume_after(event_store, 300)
    wait_until(lambda: relay._identity.epoch == 1, 30, "the relay takes the decision")
    for round_ in range(4):
        relay.stop()
        appended += append_events(event_store, streams=5, per_stream=2, prefix=f"round{round_}")
        relay = start_relay(relays, event_store, config)
        wait_until(relay.leading.is_set, 30, "the restarted relay")
    wait_until(lambda: relay.last_published == len(appended), 120, "the relay, at the end")
    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic])
    after = [m for m in seen if m.headers.get(EPOCH_HEADER) == b"1"]
    numbers = sorted(m.event_number for m in after)
    assert numbers == list(range(301, len(appended) + 1)), (
        f"epoch 1 holds {len(numbers)} messages, {len(set(numbers))} distinct, "
        f"from {numbers[:1]} to {numbers[-1:]}"
    )
    before = sorted(m.event_number for m in seen if m.headers.get(EPOCH_HEADER) == b"0")
    assert before == list(range(1, len(before) + 1)), "epoch 0: a gapless start, each once"


def test_a_relay_blocked_on_a_refused_event_does_not_hold_back_read_committed_readers_of_its_partition(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    # While blocked, the relay tries the refused event again every problem_retry seconds. Its attempts
    # must not keep a transaction open on the partition: read_committed readers (a consumer waiting for
    # the partition's end, the lag it reports, read_to_end here) would never reach the partition's end.
    # (Each attempt is one event alone, aborted, which leaves a marker on the partition: a retry every
    # fraction of a second keeps moving the end a reader chases, so this test retries every 2 s; the
    # default is 5.)
    topic = kafka_namespace.topic("events")
    gate = threading.Event()
    config = RelayConfig(
        kafka_namespace.bootstrap_servers,
        routing=Routing(topic, key=_gate_key(gate)),
        problem_retry=2.0,
        partitions=3,
        compression="none",
    )
    published = append_events(event_store, streams=3, per_stream=2)
    relay = start_relay(relays, event_store, config)
    wait_until(lambda: relay.last_published == 6, 30, "the relay")
    gate.set()
    gate_event = EventData("Gate", b"g", schema_id="test:1")
    event_store.append_to_stream("account-0", ANY, [gate_event])
    wait_until(lambda: relay_verdict(event_store) == "blocked", 30, "blocked at the gate")
    published += [gate_event.event_id, *append_events(event_store, streams=7, per_stream=30, prefix="head")]
    event_store.append_to_stream("head-3", ANY, [EventData("Big", os.urandom(100_000), schema_id="t:1")])
    append_events(event_store, streams=7, per_stream=30, prefix="tail")
    set_topic_limit(kafka_namespace.bootstrap_servers, topic, 60_000)
    gate.clear()
    wait_until(lambda: _status_event(event_store) == len(published) + 1, 90, "blocked at the big event")

    seen = read_to_end(kafka_namespace.bootstrap_servers, [topic], timeout=30)
    assert_exactly_once_in_order(seen, published)


def test_narrowing_leaves_no_transaction_hanging_on_the_partition_once_the_relay_goes_on(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    # The narrowing scenario above, then the limit raised and everything published: every partition
    # must be readable to its end by a read_committed reader. A transaction left hanging on a
    # partition (a produce request that reached the broker after the abort) holds back the last
    # stable offset, and with it every consumer of the partition, for good.
    topic = kafka_namespace.topic("events")
    gate = threading.Event()
    config = RelayConfig(
        kafka_namespace.bootstrap_servers,
        routing=Routing(topic, key=_gate_key(gate)),
        problem_retry=RETRY,
        partitions=3,
        compression="none",
    )
    appended = append_events(event_store, streams=3, per_stream=2)
    relay = start_relay(relays, event_store, config)
    wait_until(lambda: relay.last_published == 6, 30, "the relay")
    gate.set()
    gate_event = EventData("Gate", b"g", schema_id="test:1")
    event_store.append_to_stream("account-0", ANY, [gate_event])
    wait_until(lambda: relay_verdict(event_store) == "blocked", 30, "blocked at the gate")
    appended += [gate_event.event_id, *append_events(event_store, streams=7, per_stream=30, prefix="head")]
    big = EventData("Big", os.urandom(100_000), schema_id="test:1")
    event_store.append_to_stream("head-3", ANY, [big])
    appended += [big.event_id, *append_events(event_store, streams=7, per_stream=30, prefix="tail")]
    set_topic_limit(kafka_namespace.bootstrap_servers, topic, 60_000)
    gate.clear()
    wait_until(lambda: _status_event(event_store) == len(appended) - 210, 90, "blocked at the big event")

    set_topic_limit(kafka_namespace.bootstrap_servers, topic, 4_194_304)
    wait_until(lambda: relay.last_published == len(appended), 90, "the relay, once the limit is raised")
    assert_exactly_once_in_order(
        read_to_end(kafka_namespace.bootstrap_servers, [topic], timeout=60), appended
    )
