"""Where a relay stands: the decision where to resume, and its row in PostgreSQL.

``decide_resume`` is the trust model of the tail (docs/decisions/0013-the-relays-tail-trust.md), pure so
that it can be read and property-tested on its own: the relay resumes after the newest message of its own
that the store confirms, never after a message it cannot confirm, and says what is wrong otherwise.

``RelayRecord`` is the relay's row: its position (a hint for operators: Kafka's confirmed tail is the
truth), its leader, its verdict, and its epoch, which the operator's ``resume_after`` moves on.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import sql

from eventstore.errors import EventStoreError
from eventstore.kafka_tail import Tail, TailMessage
from eventstore.postgres.store import PostgresEventStore
from eventstore.relay_problems import (
    ForeignMessages,
    KafkaAheadOfStore,
    RelayProblem,
    TailMismatch,
    TailUnconfirmed,
)

__all__ = [
    "InvalidResumePoint",
    "Recorded",
    "RelayIdentity",
    "RelayRecord",
    "RelayStatus",
    "Resume",
    "StoreFacts",
    "decide_resume",
    "foreign_messages",
    "relay_status",
    "resume_after",
]

log = logging.getLogger("eventstore.relay")


def _bigint(number: int | None) -> int | None:
    return number if number is not None and -(2**63) <= number < 2**63 else None


class InvalidResumePoint(EventStoreError, ValueError):
    """``resume_after`` was given a position the store cannot resume from."""


@dataclass(frozen=True, slots=True)
class RelayIdentity:
    """Who publishes: the store's id, the relay's name and its current epoch (with where it began)."""

    store: str
    relay: str
    epoch: int = 0
    epoch_start: int = 0

    def owns(self, message: TailMessage) -> bool:
        return (message.store, message.relay) == (self.store, self.relay)


@dataclass(frozen=True, slots=True)
class StoreFacts:
    """What the store says about the numbers the tail names."""

    last_numbered: int
    event_ids: Mapping[int, str]
    """event_number -> event_id, for the numbers asked about that the store holds."""


@dataclass(frozen=True, slots=True)
class Resume:
    """Where to go on: after ``position``; ``previous`` per topic for the ``tidings.previous`` header."""

    position: int
    previous: dict[str, int]
    republish_from: int | None = None
    """Set when Kafka holds less than the relay recorded: the events after ``position`` go out again."""
    ignored_foreign: list[TailMessage] = field(default_factory=list)


def numbers_to_check(tail: Tail, identity: RelayIdentity) -> list[int]:
    """The event_numbers ``decide_resume`` needs the store's event ids of."""
    return sorted({m.event_number for m in tail.newest if identity.owns(m) and m.event_number is not None})


def decide_resume(
    tail: Tail,
    identity: RelayIdentity,
    facts: StoreFacts,
    *,
    recorded: int,
    topics: Sequence[str],
    ignore_stores: Collection[str] = frozenset(),
    recreated: Collection[str] = frozenset(),
) -> Resume:
    """Where the relay resumes, from what its topics' tail and its store say.

    Raises:
        ForeignMessages: another store or relay published on the topics (unless its store is ignored).
        KafkaAheadOfStore: an own message names a number above the store's newest.
        TailMismatch: an own message's event is not the one the store holds at its number.
        TailUnconfirmed: the topics were written to, but nothing left on them is confirmed as the relay's.

    A topic in ``recreated`` (its Kafka id changed since the relay last had it complete) gets every event
    again: the relay cannot tell which of its events it held.
    """
    foreign = foreign_messages(tail, identity, ignore_stores)
    if foreign:
        raise ForeignMessages([m.origin for m in foreign], sorted({m.topic for m in foreign}), identity.store)
    current: list[TailMessage] = []
    ahead = [
        m.event_number or 0
        for m in tail.newest
        if identity.owns(m) and m.epoch >= identity.epoch and (m.event_number or 0) > facts.last_numbered
    ]
    if ahead:
        raise KafkaAheadOfStore(max(ahead), facts.last_numbered)
    for message in tail.newest:
        number = message.event_number or 0
        if not identity.owns(message):
            if identity.epoch == 0:
                current.append(message)  # an earlier release's message, confirmed by the store already
            continue
        if message.epoch < identity.epoch:
            continue  # from before the operator's decision: it says nothing about where the relay stands
        held = facts.event_ids.get(number)
        if held is not None and held != message.event_id:
            raise TailMismatch(number, message.event_id or "?", held)
        # held is None: the event was erased (a hard delete) after it was published; its number stands.
        current.append(message)
    # The header chain goes on from the last message the relay's topic really holds, whatever its epoch.
    previous = {topic: tail.per_topic.get(topic, 0) for topic in topics}
    if current:
        newest = max(current, key=lambda m: m.event_number or 0)
        position = min(newest.event_number or 0, _complete_up_to(newest, previous, tail.trimmed))
    elif identity.epoch > 0:
        position = identity.epoch_start
    elif tail.ever_written and recorded > 0:
        raise TailUnconfirmed(recorded)
    else:
        position = 0
    if recreated:
        position = 0
    return Resume(position, previous, position if recorded > position else None, tail.foreign)


def foreign_messages(
    tail: Tail, identity: RelayIdentity, ignore_stores: Collection[str]
) -> list[TailMessage]:
    """The messages of other stores or relays on ``tail`` that stop the relay."""
    # Ignoring a store is for other stores: another relay of this one is never a leftover.
    return [m for m in tail.foreign if m.store not in ignore_stores or m.store == identity.store]


def _complete_up_to(newest: TailMessage, holds: Mapping[str, int], trimmed: Collection[str]) -> int:
    """Up to where every topic holds what the newest message says was published on it before.

    A topic that holds less (restored from an older backup while another topic went on) has lost events
    after the last one it holds: the relay publishes again from there. The events of the other topics
    after that point go out a second time, under the same ids and numbers. A topic retention has trimmed
    holds less on purpose: it is left out.
    """
    complete = newest.event_number or 0
    for topic, last in (newest.previous or {}).items():
        if topic in holds and topic not in trimmed and holds[topic] < last:
            complete = min(complete, holds[topic])
    return complete


# --- the relays row ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelayStatus:
    """A relay's position, leader and verdict, as recorded in PostgreSQL.

    ``verdict`` is ``ok`` while the relay publishes (or stands ready to); otherwise it names the problem
    (``eventstore.relay_problems``: ``kafka_ahead``, ``tail_mismatch``, ``foreign_store``,
    ``tail_unconfirmed``, ``tail_unreadable``, ``blocked``) and ``problem`` says what happened and what to
    do; ``problem_event`` is the event_number it concerns, where there is one.
    """

    name: str
    last_published: int
    last_numbered: int
    leader: str | None
    lag_events: int
    verdict: str = "ok"
    problem: str = ""
    problem_event: int | None = None
    problem_since: datetime | None = None
    epoch: int = 0


class _Statements:
    def __init__(self, schema: str) -> None:
        relays = sql.Identifier(schema, "relays")
        self.ensure = sql.SQL("INSERT INTO {} (name) VALUES (%(name)s) ON CONFLICT (name) DO NOTHING").format(
            relays
        )
        self.lead = sql.SQL(
            "UPDATE {} SET leader = %(leader)s, leader_since = now(), updated_at = now() "
            "WHERE name = %(name)s"
        ).format(relays)
        self.position = sql.SQL(
            "SELECT last_event_number, epoch, epoch_start, topic_ids, epoch_offsets FROM {} "
            "WHERE name = %(name)s"
        ).format(relays)
        self.epoch_offsets = sql.SQL(
            "UPDATE {} SET epoch_offsets = %(offsets)s WHERE name = %(name)s AND epoch = %(epoch)s"
        ).format(relays)
        self.topic_ids = sql.SQL("UPDATE {} SET topic_ids = %(ids)s WHERE name = %(name)s").format(relays)
        self.epoch = sql.SQL("SELECT epoch FROM {} WHERE name = %(name)s").format(relays)
        self.checkpoint = sql.SQL(
            "UPDATE {} SET last_event_number = %(position)s, updated_at = now() "
            "WHERE name = %(name)s AND epoch = %(epoch)s"
        ).format(relays)
        self.report = sql.SQL(
            "UPDATE {} SET verdict = %(verdict)s, problem = %(problem)s, problem_event = %(event)s, "
            "problem_since = CASE WHEN verdict = %(verdict)s AND problem_since IS NOT NULL "
            "THEN problem_since WHEN %(verdict)s = 'ok' THEN NULL ELSE now() END, updated_at = now() "
            "WHERE name = %(name)s"
        ).format(relays)
        self.decide = sql.SQL(
            "INSERT INTO {} AS r (name, last_event_number, epoch, epoch_start) "
            "VALUES (%(name)s, %(position)s, 1, %(position)s) ON CONFLICT (name) DO UPDATE "
            "SET epoch = r.epoch + 1, epoch_start = %(position)s, last_event_number = %(position)s, "
            "epoch_offsets = '{{}}', "
            "updated_at = now() RETURNING epoch"
        ).format(relays)
        self.status = sql.SQL(
            "SELECT name, last_event_number, leader, verdict, problem, problem_event, problem_since, epoch "
            "FROM {} ORDER BY name"
        ).format(relays)
        self.store_id = sql.SQL("SELECT value FROM {} WHERE key = 'store_id'").format(
            sql.Identifier(schema, "store_info")
        )
        self.event_ids = sql.SQL(
            "SELECT o.event_number, e.event_id::text FROM {} o JOIN {} e ON e.id = o.id "
            "WHERE o.event_number = ANY(%(numbers)s)"
        ).format(sql.Identifier(schema, "event_order"), sql.Identifier(schema, "events"))


@dataclass(frozen=True, slots=True)
class Recorded:
    """A relay's row, as it resumes."""

    position: int
    epoch: int
    epoch_start: int
    topic_ids: dict[str, str]
    epoch_offsets: dict[str, Any]
    """``{"epoch": E, "offsets": {"<topic id>/<partition>": offset}}`` once the relay took epoch E."""

    def boundary(self, ids: Mapping[str, str]) -> dict[tuple[str, int], int] | None:
        """Where the current epoch began per (topic, partition) of the topics as they are now (``ids``),
        or None if the relay has not taken this epoch yet (or it is epoch 0)."""
        if self.epoch == 0 or self.epoch_offsets.get("epoch") != self.epoch:
            return None
        topics = {topic_id: topic for topic, topic_id in ids.items()}
        found = {}
        for key, offset in self.epoch_offsets.get("offsets", {}).items():
            topic_id, _, partition = key.rpartition("/")
            if topic_id in topics:  # a topic made again since starts its epoch at its start
                found[(topics[topic_id], int(partition))] = int(offset)
        return found


class RelayRecord:
    """One relay's row in ``<schema>.relays``."""

    def __init__(self, store: PostgresEventStore, name: str) -> None:
        self.store = store
        self.name = name
        self._sql = _Statements(store.config.schema)

    def store_id(self) -> str:
        """The store's identity, which every message of its relays carries (``STORE_HEADER``)."""
        with self.store.connection() as conn:
            row = conn.execute(self._sql.store_id).fetchone()
        if row is None:
            raise EventStoreError("the store has no store_id in store_info: run `tidings migrate`")
        return str(uuid.UUID(str(row[0])))

    def ensure(self) -> None:
        with self.store.connection() as conn:
            conn.execute(self._sql.ensure, {"name": self.name})

    def lead(self, whoami: str) -> None:
        with self.store.connection() as conn:
            conn.execute(self._sql.lead, {"name": self.name, "leader": whoami})

    def recorded(self) -> Recorded:
        """What the row says: the position, the epoch, the topics' ids and where the epoch began."""
        with self.store.connection() as conn:
            row = conn.execute(self._sql.position, {"name": self.name}).fetchone()
        if row is None:
            return Recorded(0, 0, 0, {}, {})
        return Recorded(int(row[0]), int(row[1]), int(row[2]), dict(json.loads(row[3])), json.loads(row[4]))

    def record_epoch_offsets(self, epoch: int, offsets: Mapping[str, int]) -> None:
        """Where each partition (``<topic id>/<partition>``) ended when the relay took epoch ``epoch``."""
        document = json.dumps({"epoch": epoch, "offsets": dict(offsets)}, sort_keys=True)
        with self.store.connection() as conn:
            conn.execute(self._sql.epoch_offsets, {"name": self.name, "epoch": epoch, "offsets": document})

    def record_topic_ids(self, ids: Mapping[str, str]) -> None:
        """The topics' ids, once the relay has them complete (every event published to them)."""
        with self.store.connection() as conn:
            conn.execute(
                self._sql.topic_ids, {"name": self.name, "ids": json.dumps(dict(ids), sort_keys=True)}
            )

    def epoch(self) -> int:
        with self.store.connection() as conn:
            row = conn.execute(self._sql.epoch, {"name": self.name}).fetchone()
        return int(row[0]) if row else 0

    def checkpoint(self, position: int, epoch: int) -> bool:
        """Record the position; False if an operator's decision began another epoch meanwhile."""
        with self.store.connection() as conn:
            return (
                conn.execute(
                    self._sql.checkpoint, {"name": self.name, "position": position, "epoch": epoch}
                ).rowcount
                == 1
            )

    def report(self, problem: RelayProblem | None) -> None:
        """Record the verdict: ``problem``, or ok when it is None."""
        params = {
            "name": self.name,
            "verdict": "ok" if problem is None else problem.verdict,
            "problem": "" if problem is None else str(problem),
            # A made-up number may not fit the column; the text still names it.
            "event": None if problem is None else _bigint(problem.event_number),
        }
        with self.store.connection() as conn:
            conn.execute(self._sql.report, params)

    def facts(self, numbers: Sequence[int]) -> StoreFacts:
        """The store's newest number and its event ids at ``numbers``."""
        return StoreFacts(self.store.last_event_number(), self.event_ids(numbers))

    def event_ids(self, numbers: Sequence[int]) -> dict[int, str]:
        wanted = [n for n in numbers if 0 < n < 2**63]  # a made-up header may hold any integer
        if not wanted:
            return {}
        with self.store.connection() as conn:
            rows = conn.execute(self._sql.event_ids, {"numbers": wanted}).fetchall()
        return {int(number): str(event_id) for number, event_id in rows}

    def confirm(self, pairs: Sequence[tuple[int, str]]) -> set[tuple[int, str]]:
        """The (event_number, event_id) pairs the store holds as they are."""
        held = self.event_ids([number for number, _ in pairs])
        return {(number, event_id) for number, event_id in pairs if held.get(number) == _uuid_text(event_id)}


def _uuid_text(text: str) -> str | None:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def relay_status(store: PostgresEventStore) -> list[RelayStatus]:
    """Every relay of ``store``: its recorded position, last leader, lag behind the sequencer and verdict.

    A relay whose recorded position is above the store's newest event is reported ``kafka_ahead`` even
    before a relay has looked: the store has lost events that were published.
    """
    last = store.last_event_number()
    with store.connection() as conn:
        rows = conn.execute(_Statements(store.config.schema).status).fetchall()
    found = []
    for name, position, leader, verdict, problem, event, since, epoch in rows:
        position = int(position)
        if verdict == "ok" and position > last:
            verdict, problem, event = "kafka_ahead", str(KafkaAheadOfStore(position, last)), position
        found.append(
            RelayStatus(
                name,
                position,
                last,
                leader,
                max(0, last - position),
                verdict,
                problem,
                event,
                since,
                int(epoch),
            )
        )
    return found


def resume_after(store: PostgresEventStore, position: int, name: str = "default") -> int:
    """The operator's decision: relay ``name`` goes on after event_number ``position``.

    The leading relay takes it within a second (or at its next attempt, if a problem stopped it); what
    it had published before no longer says where it stands (a new epoch). Returns the new epoch.

    Raises:
        InvalidResumePoint: ``position`` is negative or above the store's newest event.
    """
    last = store.last_event_number()
    if not 0 <= position <= last:
        raise InvalidResumePoint(
            f"cannot resume after event_number {position}: the store's events run from 1 to {last}; "
            "give a number in 0..{last} (0 publishes everything again)".replace("{last}", str(last))
        )
    with store.connection() as conn:
        row = conn.execute(
            _Statements(store.config.schema).decide, {"name": name, "position": position}
        ).fetchone()
    epoch = int(row[0]) if row else 0
    log.warning(
        "the operator moved a relay's position",
        extra={
            "schema": store.config.schema,
            "relay_name": name,
            "after_event_number": position,
            "epoch": epoch,
        },
    )
    return epoch
