"""Leadership on the real PostgreSQL and the real Kafka: a leader is one whose session holds the lock.

A relay whose lock session ends (``pg_terminate_backend``, a PgBouncer or network cut) while it idles
must find out and step down, not lead on from a fresh session that holds nothing, which would let a
second relay lead beside it, the two fencing each other for good.
"""

from __future__ import annotations

import time

import pytest

from eventstore import ConfigurationError, PostgresEventStore, StoreConfig
from eventstore.leadership import Leadership
from eventstore.relay import Relay, RelayConfig
from eventstore.routing import Routing
from tests.eventstore.leadership_support import holders, login_role, role_url, terminate_holders
from tests.eventstore.relay_support import (
    Writers,
    append_events,
    assert_exactly_once_in_order,
    read_to_end,
    wait_until,
)
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema


def fencings(store: PostgresEventStore) -> float:
    from eventstore import metrics

    return metrics.RELAY_ERRORS.labels(store.config.schema, "default", "producer")._value.get()


def the_leader(url: str, relays: list[Relay]) -> Relay | None:
    """The one relay that leads with the lock held on its own session (None while that is not so)."""
    leading = [relay for relay in relays if relay.leading.is_set()]
    if len(leading) != 1:
        return None
    (holder,) = holders(url, leading[0].identity) or [None]
    if holder is None or holder.pid != leading[0]._leadership.pid:
        return None
    return leading[0]


def test_a_relay_whose_idle_session_was_ended_steps_down_and_one_relay_leads(
    event_store: PostgresEventStore, kafka_namespace: KafkaNamespace, relays: list[Relay]
) -> None:
    url = event_store.config.url
    topic = kafka_namespace.topic("events")
    config = RelayConfig(
        kafka_namespace.bootstrap_servers, routing=Routing(topic), partitions=3, batch_size=50
    )
    relays.append(first := Relay(event_store, config))
    first.start()
    appended = append_events(event_store, streams=4, per_stream=5)
    wait_until(lambda: first.last_published == len(appended), 60, "the first relay publishes")
    # Idle now (waiting for a notification on its lock's session): end that session under it.
    wait_until(lambda: len(holders(url, first.identity)) == 1, 30, "the lock held")
    (ended,) = terminate_holders(url, first.identity)
    relays.append(second := Relay(event_store, config))
    second.start()

    wait_until(lambda: the_leader(url, [first, second]) is not None, 60, "one relay leads, holding the lock")
    leader = the_leader(url, [first, second])
    assert leader is not None
    assert leader._leadership.pid != ended.pid
    # Over a window of appends, published by the leader: no fencing back and forth, one leader throughout.
    before = fencings(event_store)
    with Writers(event_store, streams=8) as writers:
        wait_until(lambda: len(writers.appended) >= 300, 60, "appends in the window")
    appended += writers.stop()
    total = len(appended)
    deadline = time.monotonic() + 60
    while leader.last_published < total:
        assert time.monotonic() < deadline, f"published {leader.last_published} of {total} in 60s"
        assert the_leader(url, [first, second]) is leader, "the leadership moved or doubled"
        time.sleep(0.05)
    assert fencings(event_store) == before, "the relays fenced each other"
    assert the_leader(url, [first, second]) is leader
    assert_exactly_once_in_order(read_to_end(kafka_namespace.bootstrap_servers, [topic]), appended)


def test_a_leadership_whose_session_ended_is_lost_and_opens_no_other_session(
    postgres_schema: PostgresSchema,
) -> None:
    url = postgres_schema.server_url
    name = f"tidings-test.{postgres_schema.name}"
    leadership = Leadership(url, name)
    try:
        assert leadership.try_acquire()
        assert leadership.check()
        wait_until(lambda: len(holders(url, name)) == 1, 30, "the lock held")
        terminate_holders(url, name)
        # Waiting for a notification finds the session gone: no session is opened in its place.
        assert not leadership.wait(1.0)
        assert not leadership.held
        assert not leadership.check()
        assert holders(url, name) == []
    finally:
        leadership.release()


def test_a_relay_takes_its_lock_on_a_session_of_the_stores_leader_url(
    postgres_schema: PostgresSchema,
    event_store: PostgresEventStore,
    kafka_namespace: KafkaNamespace,
    relays: list[Relay],
) -> None:
    url = postgres_schema.server_url
    topic = kafka_namespace.topic("events")
    with login_role(url) as role:
        config = StoreConfig(url, postgres_schema.name, leader_url=role_url(url, role))
        with PostgresEventStore(config, sequencer=False) as store:
            relays.append(
                relay := Relay(store, RelayConfig(kafka_namespace.bootstrap_servers, routing=Routing(topic)))
            )
            relay.start()
            appended = append_events(event_store, streams=2, per_stream=2)
            wait_until(lambda: relay.last_published == len(appended), 60, "the relay publishes")
            assert [h.user for h in holders(url, relay.identity)] == [role]
            relay.stop()


def test_the_leader_url_is_a_postgresql_url_kept_out_of_the_repr() -> None:
    with pytest.raises(ConfigurationError, match="not a PostgreSQL URL"):
        StoreConfig("postgresql://app@db/app", leader_url="mysql://app@db/app")
    config = StoreConfig("postgresql://app@db/app", leader_url="postgresql://app:s3cret@bouncer:6432/app")
    assert config.leadership_url == "postgresql://app:s3cret@bouncer:6432/app"
    assert "s3cret" not in repr(config)
    assert "bouncer:6432" in repr(config)
    assert StoreConfig("postgresql://app@db/app").leadership_url == "postgresql://app@db/app"
