"""Shared by the relay tests: appending, and reading back what a read_committed consumer sees."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from psycopg import sql

from eventstore import ANY, EventData, PostgresEventStore
from eventstore.relay import Relay, RelayConfig, relay_status
from tests.support import tidings_script


@dataclass(frozen=True)
class Seen:
    """One message as a read_committed consumer received it."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: dict[str, bytes]

    @property
    def event_id(self) -> uuid.UUID:
        return uuid.UUID(self.headers["event_id"].decode())

    @property
    def event_number(self) -> int:
        return int(self.headers["event_number"])


def append_events(
    store: PostgresEventStore, streams: int, per_stream: int, prefix: str = "account"
) -> list[uuid.UUID]:
    """Append ``per_stream`` events to each of ``streams`` streams, interleaved; return their ids."""
    ids = []
    for version in range(per_stream):
        for stream in range(streams):
            event = EventData("Noted", f"{stream}:{version}".encode(), schema_id="test:1")
            store.append_to_stream(f"{prefix}-{stream}", ANY, [event])
            ids.append(event.event_id)
    return ids


def read_committed(
    bootstrap_servers: str,
    topics: list[str],
    group: str,
    until: Callable[[list[Seen]], bool],
    timeout: float = 60.0,
) -> list[Seen]:
    """Consume ``topics`` from the start with read_committed until ``until(seen)`` holds.

    Raises:
        AssertionError: ``until`` did not hold within ``timeout`` seconds (with what was seen).
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": group,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
        }
    )
    consumer.subscribe(topics)
    seen: list[Seen] = []
    deadline = time.monotonic() + timeout
    try:
        while not until(seen):
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up after {timeout}s with {len(seen)} messages")
            for message in consumer.consume(num_messages=1000, timeout=0.2):
                error = message.error()
                if error is not None:
                    if error.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                        continue  # the end for now, or a topic the relay has not created yet
                    raise KafkaException(error)
                seen.append(_seen(message))
    finally:
        consumer.close()
    return seen


def assert_exactly_once_in_order(seen: list[Seen], appended: list[uuid.UUID]) -> None:
    """Every appended event seen once, and per key in event_number (and stream_version) order."""
    ids = [message.event_id for message in seen]
    duplicates = {i for i in ids if ids.count(i) > 1} if len(ids) != len(set(ids)) else set()
    assert not duplicates, f"{len(duplicates)} events published twice, e.g. {sorted(duplicates)[:3]}"
    assert set(ids) == set(appended), (
        f"missing {len(set(appended) - set(ids))}, unexpected {len(set(ids) - set(appended))}"
    )
    by_key: dict[bytes, list[Seen]] = defaultdict(list)
    for message in sorted(seen, key=lambda m: (m.topic, m.partition, m.offset)):
        by_key[message.key].append(message)
    for key, messages in by_key.items():
        numbers = [m.event_number for m in messages]
        assert numbers == sorted(numbers), f"key {key!r} out of event_number order: {numbers}"
        versions = [int(m.headers["stream_version"]) for m in messages]
        assert versions == list(range(1, len(versions) + 1)), f"key {key!r} stream versions {versions}"


def read_to_end(bootstrap_servers: str, topics: list[str], timeout: float = 120.0) -> list[Seen]:
    """Every committed message of ``topics``, reading each partition from its start to its end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": "tidings-tests-read-to-end",  # assigned, never committed
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        metadata = consumer.list_topics(timeout=30)
        partitions = [
            TopicPartition(topic, number, OFFSET_BEGINNING)
            for topic in topics
            for number in metadata.topics[topic].partitions
        ]
        consumer.assign(partitions)
        open_partitions = {(tp.topic, tp.partition) for tp in partitions}
        seen: list[Seen] = []
        deadline = time.monotonic() + timeout
        while open_partitions:
            assert time.monotonic() < deadline, f"partitions {open_partitions} never reached their end"
            for message in consumer.consume(num_messages=1000, timeout=0.2):
                error = message.error()
                where = (str(message.topic()), int(message.partition() or 0))
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        open_partitions.discard(where)
                        continue
                    raise KafkaException(error)
                seen.append(_seen(message))
        return seen
    finally:
        consumer.close()


def _seen(message: Message) -> Seen:
    return Seen(
        str(message.topic()),
        int(message.partition() or 0),
        int(message.offset() or 0),
        message.key() or b"",
        message.value() or b"",
        {name: bytes(value or b"") for name, value in message.headers() or []},
    )


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


class Writers:
    """A thread appending single events round-robin to ``streams`` streams until stopped."""

    def __init__(
        self,
        store: PostgresEventStore,
        streams: int = 30,
        pause: float = 0.002,
        make: Callable[[str, int], EventData] | None = None,  # (stream, index in it) -> event
    ) -> None:
        self.store = store
        self.make = make or _opaque
        self.streams = streams
        self.pause = pause
        self.appended: list[uuid.UUID] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writers", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> Writers:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> list[uuid.UUID]:
        self._stopping.set()
        self._thread.join(30)
        assert self.error is None, f"the writers failed: {self.error!r}"
        return self.appended

    def _run(self) -> None:
        number = 0
        try:
            while not self._stopping.is_set():
                stream = f"account-{number % self.streams}"
                event = self.make(stream, number // self.streams)  # the event's index in its stream
                self.store.append_to_stream(stream, ANY, [event])
                self.appended.append(event.event_id)
                number += 1
                self._stopping.wait(self.pause)  # a steady trickle, not a flood
        except BaseException as exc:  # noqa: BLE001  # reported by stop()
            self.error = exc


def _opaque(stream: str, n: int) -> EventData:
    return EventData("Noted", b"%d" % n, schema_id="test:1")


def relay_row(store: PostgresEventStore, name: str = "default") -> tuple[str | None, int]:
    """The relay's recorded leader and last published event_number."""
    with store.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT leader, last_event_number FROM {} WHERE name = %s").format(
                sql.Identifier(store.config.schema, "relays")
            ),
            (name,),
        ).fetchone()
    return (row[0], int(row[1])) if row else (None, 0)


class RelayProcess:
    """``tidings relay`` in a process of its own, logging to ``log_path``."""

    def __init__(self, env: dict[str, str], args: list[str], log_path: Path) -> None:
        self._log = open(log_path, "ab")  # noqa: SIM115  # closed in kill()/terminate()
        self.process = subprocess.Popen(
            [tidings_script(), "relay", *args], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.identity = f"{socket.gethostname()}:{self.process.pid}"

    def kill(self) -> None:
        """kill -9."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self._log.close()

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(60)
        self._log.close()
        return code


def start_relay(relays: list[Relay], store: PostgresEventStore, config: RelayConfig) -> Relay:
    """A relay started in a thread, and kept in ``relays`` (the fixture) to be stopped at the test's end."""
    relay = Relay(store, config)
    relays.append(relay)
    relay.start()
    return relay


def relay_verdict(store: PostgresEventStore, name: str = "default") -> str | None:
    """The relay's verdict in ``relay_status``, None before it has a row."""
    return next((s.verdict for s in relay_status(store) if s.name == name), None)


def set_topic_limit(bootstrap: str, topic: str, limit: int) -> None:
    """Set a topic's ``max.message.bytes``, as an operator would under a running relay."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("max.message.bytes", str(limit), incremental_operation=AlterConfigOpType.SET)
        ],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)
