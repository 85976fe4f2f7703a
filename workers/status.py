"""Where everything is: the relays, and every handler's consumer group, partition by partition.

``collect_status`` gathers what ``tidings status`` shows, and returns it as frozen values (it prints
nothing), so that a script, a test or ``tidings demo`` can use it too:

- **relays**: each relay's last published event_number and its lag behind the sequencer
  (``eventstore.relay.relay_status``);
- **handlers**: for each handler (projection, process manager), its kind and mode, its consumer group's
  state, and for each partition of the topics it reads: its position, the partition's end, the lag in
  events, and the event_number of the last event it finished with; its parked events (not released);
  for a process manager, its live instances and pending scheduled commands.

A projection's or process manager's position is its checkpoint in PostgreSQL (the worker seeks there;
it is also where the last handled event_number comes from). A plain handler's is its group's committed
offset in Kafka, and its last handled event_number is read from the ``event_number`` header of the
message before that offset. Lag is counted in Kafka (``workers.group_offsets``).

Without a list of handlers, they are found: the names in the store's tables (checkpoints, parked events,
process instances, subscriptions, strong handlers) and the consumer groups with offsets committed on
``topics`` (or on their own repartitioned topic). Their kind is then known only as far as the tables
tell; give the handlers (``specs_of(app)``) to know it for sure.

Example::

    status = collect_status(store, "kafka:9092", {}, topics=["bank.events"], handlers=specs_of(app))
    for handler in status.handlers:
        print(handler.name, handler.kind, handler.total_lag, handler.parked)
    json.dumps(status.document())          # what ``tidings status --json`` prints

Raises (``collect_status``):
    KafkaUnavailable: Kafka did not answer within ``timeout`` seconds (or refused a question).
    StoreUnavailable: PostgreSQL did not answer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from psycopg import sql

from eventstore.command_sender import OutboxStatus, outbox_status
from eventstore.leadership import application_name, lock_key
from eventstore.postgres.store import PostgresEventStore
from eventstore.relay import RelayStatus, relay_status
from workers.app import WorkerApp
from workers.group_offsets import KafkaUnavailable, KafkaView, Reading, ToRead, Where
from workers.handler import ordering_of
from workers.process_manager import ProcessManager
from workers.projection import Projection
from workers.reset import handler_lock_name
from workers.runner import handler_topics

__all__ = [
    "HandlerProgress",
    "ReceiverProgress",
    "HandlerSpec",
    "KafkaUnavailable",
    "Kind",
    "PartitionLag",
    "StoreStatus",
    "collect_status",
    "specs_of",
]

Kind = Literal["handler", "projection", "process manager"]
Mode = Literal["exactly-once", "at-least-once"]
"""Exactly-once: effects commit with a checkpoint in PostgreSQL. At-least-once: Kafka offsets."""

# Consumer groups that tidings' own tools use to read, never to handle.
_TOOL_GROUPS = frozenset({"tidings-status", "tidings-relay-tail"})


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A handler as its application declares it (unknown fields are found from the store)."""

    name: str
    kind: Kind | None = None
    topics: tuple[str, ...] = ()
    """The topics it reads (none given: those it has positions on, else the ``topics`` asked about)."""
    consistency: Literal["eventual", "strong"] | None = None
    ordering: str | None = None


def specs_of(app: WorkerApp) -> list[HandlerSpec]:
    """The handlers of ``app``, with their kinds, topics and consistency."""
    return [
        HandlerSpec(
            handler.name,
            "process manager"
            if issubclass(handler, ProcessManager)
            else "projection"
            if issubclass(handler, Projection)
            else "handler",
            tuple(handler_topics(handler, app)),
            handler.consistency,
            ordering_of(handler),
        )
        for handler in app.handlers
    ]


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition a handler reads, and how far behind its end the handler is."""

    topic: str
    partition: int
    position: int | None
    """Where the handler resumes: its checkpoint, else its group's committed offset (None: neither)."""
    committed: int | None
    """The consumer group's committed offset in Kafka."""
    checkpoint: int | None
    """The checkpoint's next offset in PostgreSQL (projections and process managers)."""
    end: int
    """The partition's end for a ``read_committed`` consumer (its last stable offset)."""
    lag: int
    """Events between the position (or the partition's start) and the end."""
    lag_exact: bool
    """False past ``MAX_COUNTED`` events: ``lag`` is then the offset difference, an upper bound."""
    last_event_number: int | None
    """The event_number of the last event the handler finished with on this partition."""
    note: str = ""
    """Why ``last_event_number`` is None."""


@dataclass(frozen=True, slots=True)
class HandlerProgress:
    """A handler's consumer group and where it is."""

    name: str
    kind: Kind | None
    """None: discovered without its application, and the store does not tell."""
    mode: Mode | None
    consistency: Literal["eventual", "strong"]
    group_state: str
    """Kafka's word for the group: ``stable`` (members handling), ``empty`` (no member), ``dead``..."""
    members: int
    partitions: tuple[PartitionLag, ...]
    parked: int
    """Parked events not released yet."""
    instances: int | None = None
    """A process manager's live instances."""
    scheduled: int | None = None
    """A process manager's scheduled commands not dispatched yet."""
    ordering: str | None = None
    """``global`` or ``per_key`` (None: unknown without the application, and no active consumer)."""
    active: str | None = None
    """In global order: the PostgreSQL session of the active consumer (its client address and pid)."""
    state: str = ""
    """``stopped`` or ``failed`` when its error policy stopped it (``tidings handler restart``)."""
    reason: str = ""
    standbys: int = 0
    """In global order: the workers standing by to take over (their sessions wait for the lock)."""

    @property
    def total_lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def lag_exact(self) -> bool:
        return all(p.lag_exact for p in self.partitions)

    @property
    def last_event_number(self) -> int | None:
        """The highest event_number it finished with, on any partition."""
        numbers = [p.last_event_number for p in self.partitions if p.last_event_number is not None]
        return max(numbers, default=None)


@dataclass(frozen=True, slots=True)
class ReceiverProgress:
    """A command receiver (``workers.command_receiver``): commands executed, parked, and its lag on its
    topic (its consumer group and its topic are both named ``<app>.commands``)."""

    name: str
    received: int
    parked: int
    lag: int | None
    """Messages of the topic past the group's committed offsets (None: the topic does not exist)."""


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """What ``tidings status`` shows: the store's newest event, the relays and the handlers."""

    schema: str
    last_event_number: int
    topics: tuple[str, ...]
    relays: tuple[RelayStatus, ...]
    handlers: tuple[HandlerProgress, ...]
    outbox: tuple[OutboxStatus, ...] = ()
    """Commands to other applications not sent yet, per destination (stuck ones show their error)."""
    receivers: tuple[ReceiverProgress, ...] = ()

    def handler(self, name: str) -> HandlerProgress:
        """The handler named ``name``. Raises: KeyError."""
        for handler in self.handlers:
            if handler.name == name:
                return handler
        raise KeyError(name)

    def document(self) -> dict[str, Any]:
        """As plain JSON, with stable keys (``tidings status --json``)."""
        return {
            "schema": self.schema,
            "last_event_number": self.last_event_number,
            "topics": list(self.topics),
            "relays": [
                {**asdict(relay), "problem_since": relay.problem_since and relay.problem_since.isoformat()}
                for relay in self.relays
            ],
            "handlers": [
                {
                    "name": h.name,
                    "kind": h.kind,
                    "mode": h.mode,
                    "consistency": h.consistency,
                    "group_state": h.group_state,
                    "members": h.members,
                    "total_lag": h.total_lag,
                    "lag_exact": h.lag_exact,
                    "last_event_number": h.last_event_number,
                    "parked": h.parked,
                    "instances": h.instances,
                    "scheduled": h.scheduled,
                    "ordering": h.ordering,
                    "active": h.active,
                    "standbys": h.standbys,
                    "state": h.state,
                    "reason": h.reason,
                    "partitions": [asdict(p) for p in h.partitions],
                }
                for h in self.handlers
            ],
            "outbox": [asdict(o) for o in self.outbox],
            "receivers": [asdict(r) for r in self.receivers],
        }


def collect_status(
    store: PostgresEventStore,
    bootstrap_servers: str,
    kafka: Mapping[str, str],
    *,
    topics: Sequence[str],
    handlers: Sequence[str | HandlerSpec] | None = None,
    timeout: float = 10.0,
) -> StoreStatus:
    """The relays of ``store`` and the handlers reading ``topics`` (all found, or those given).

    ``kafka`` holds further librdkafka settings (security); each question to Kafka waits ``timeout``
    seconds at most.

    Raises:
        KafkaUnavailable: Kafka did not answer in time, or refused a question.
        StoreUnavailable: PostgreSQL did not answer.
    """
    relays = tuple(relay_status(store))
    last = store.last_event_number()
    rows = _StoreRows.read(store)
    view = KafkaView({**kafka, "bootstrap.servers": bootstrap_servers}, timeout)
    known = rows.names()
    if handlers is None:
        specs = [HandlerSpec(name) for name in sorted(known | (set(view.groups()) - _TOOL_GROUPS))]
    else:
        specs = [HandlerSpec(h) if isinstance(h, str) else h for h in handlers]
    candidates = {spec.name: view.partitions(_candidate_topics(spec, rows, topics, view)) for spec in specs}
    committed = view.committed(candidates)
    if handlers is None:  # a consumer group that is no handler of the store's has nothing on its topics
        specs = [spec for spec in specs if spec.name in known or committed[spec.name]]
    read = {spec.name: _topics_read(spec, rows, committed[spec.name], topics) for spec in specs}
    ends = view.ends(view.partitions(t for names in (topics, *read.values()) for t in names))
    groups = view.members([spec.name for spec in specs])
    progress = [
        _progress(spec, rows, committed[spec.name], read[spec.name], ends, groups[spec.name], view)
        for spec in specs
    ]
    return StoreStatus(
        store.config.schema,
        last,
        tuple(topics),
        relays,
        tuple(progress),
        tuple(outbox_status(store)),
        tuple(_receivers(store, view)),
    )


def _receivers(store: PostgresEventStore, view: KafkaView) -> list[ReceiverProgress]:
    """The command receivers that have received or parked something in this store."""
    schema = store.config.schema
    with store.connection() as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT name, sum(received), sum(parked) FROM ("
                "SELECT receiver AS name, count(*) AS received, 0 AS parked FROM {r} GROUP BY receiver "
                "UNION ALL SELECT handler, 0, count(*) FROM {p} WHERE handler LIKE '%%.commands' "
                "GROUP BY handler) AS c GROUP BY name ORDER BY name"
            ).format(r=sql.Identifier(schema, "received_commands"), p=sql.Identifier(schema, "parked_events"))
        ).fetchall()
    found = []
    existing = view.topics()
    for name, received, parked in rows:
        lag: int | None = None
        if name in existing:
            partitions = view.partitions([name])
            committed = view.committed({name: partitions})[name]
            ends = view.ends(partitions)
            lag = sum(max(0, ends[p][1] - committed.get(p, ends[p][0])) for p in partitions)
        found.append(ReceiverProgress(name, int(received), int(parked), lag))
    return found


@dataclass
class _StoreRows:
    """What the store's tables say about handlers, by handler name."""

    checkpoints: dict[str, dict[Where, tuple[int, int]]] = field(default_factory=lambda: defaultdict(dict))
    parked: dict[str, int] = field(default_factory=dict)
    instances: dict[str, int] = field(default_factory=dict)
    scheduled: dict[str, int] = field(default_factory=dict)
    subscribed: set[str] = field(default_factory=set)
    strong: set[str] = field(default_factory=set)
    stopped: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Handlers stopped by their error policy (or failed): (state, reason)."""
    advisory: dict[int, str] = field(default_factory=dict)
    """Advisory locks held, by key: the session holding each (its client and pid)."""
    holding: set[int] = field(default_factory=set)
    """The pids of the sessions holding advisory locks."""
    named: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    """The pids of tidings' leadership sessions, by application_name (a leader's or a standby's)."""

    schema: str = ""

    def leader(self, handler: str) -> str | None:
        """The session of ``handler``'s active consumer, if it runs in global order and one leads."""
        return self.advisory.get(lock_key(handler_lock_name(self.schema, handler)))

    def standbys(self, handler: str) -> int:
        """How many global-order workers of ``handler`` stand by (``eventstore.leadership.contenders``)."""
        sessions = self.named.get(application_name(handler_lock_name(self.schema, handler)), set())
        return len(sessions - self.holding)

    @classmethod
    def read(cls, store: PostgresEventStore) -> _StoreRows:
        schema = store.config.schema

        def select(text: str, table: str) -> sql.Composed:
            return sql.SQL(text).format(sql.Identifier(schema, table))

        def counts(rows: list[tuple[Any, ...]]) -> dict[str, int]:
            return {name: int(count) for name, count in rows}

        found = cls(schema=schema)
        with store.connection() as conn:
            checkpoints = conn.execute(
                select(
                    "SELECT handler, topic, partition, next_offset, event_number FROM {}",
                    "handler_checkpoints",
                )
            ).fetchall()
            for handler, topic, partition, next_offset, number in checkpoints:
                found.checkpoints[handler][(topic, partition)] = (int(next_offset), int(number))
            found.parked = counts(
                conn.execute(
                    select(
                        "SELECT handler, count(*) FROM {} WHERE NOT released GROUP BY handler",
                        "parked_events",
                    )
                ).fetchall()
            )
            found.instances = counts(
                conn.execute(
                    select(
                        "SELECT process_manager, count(*) FROM {} GROUP BY process_manager",
                        "process_instances",
                    )
                ).fetchall()
            )
            found.scheduled = counts(
                conn.execute(
                    select(
                        "SELECT scheduled_by, count(*) FROM {} WHERE scheduled_by <> %s "
                        "GROUP BY scheduled_by",
                        "scheduled_commands",
                    ),
                    ("",),  # schedules made outside a process manager
                ).fetchall()
            )
            for table, names in (
                ("handler_subscriptions", found.subscribed),
                ("strong_handlers", found.strong),
            ):
                names.update(row[0] for row in conn.execute(select("SELECT handler FROM {}", table)))
            stopped = conn.execute(select("SELECT handler, state, reason FROM {}", "handler_states"))
            found.stopped = {handler: (state, reason) for handler, state, reason in stopped}
            # A global-order handler's active consumer holds the advisory lock named for it
            # (workers.runner), on a session of the store's leader_url, which may be another server
            # address (a session-mode pooler) but is this database: pg_locks shows every database's
            # locks, and advisory locks belong to one. A bigint key shows as its two 32-bit halves.
            held = conn.execute(
                "SELECT l.classid::bigint, l.objid::bigint, "
                "coalesce(host(a.client_addr), 'local') || ' pid ' || a.pid, a.pid "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            for high, low, session, pid in held:
                key = int.from_bytes(((high << 32) | low).to_bytes(8, "big"), "big", signed=True)
                found.advisory[key] = session
                found.holding.add(int(pid))
            # A standby keeps the session it tries the lock on open: it carries the leadership's name.
            sessions = conn.execute(
                "SELECT application_name, pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE 'tidings %'"
            )
            for name, pid in sessions:
                found.named[name].add(int(pid))
        return found

    def names(self) -> set[str]:
        return {
            *self.checkpoints,
            *self.parked,
            *self.instances,
            *self.scheduled,
            *self.subscribed,
            *self.strong,
        }


def _candidate_topics(
    spec: HandlerSpec, rows: _StoreRows, topics: Sequence[str], view: KafkaView
) -> list[str]:
    """Where to look for the offsets of a handler: its topics if known; else the app's, those it has
    checkpoints on, and a repartitioned topic of its own (``<app>.<handler>.by-key``)."""
    if spec.topics:
        return list(spec.topics)
    own = [t for t in view.topics() if t.endswith(f".{spec.name}.by-key")]
    return [*topics, *(t for t, _ in rows.checkpoints.get(spec.name, {})), *own]


def _topics_read(
    spec: HandlerSpec, rows: _StoreRows, committed: dict[Where, int], topics: Sequence[str]
) -> tuple[str, ...]:
    if spec.topics:
        return spec.topics
    positioned = sorted({t for t, _ in committed} | {t for t, _ in rows.checkpoints.get(spec.name, {})})
    return tuple(positioned or topics)


def _progress(
    spec: HandlerSpec,
    rows: _StoreRows,
    committed: dict[Where, int],
    topics: tuple[str, ...],
    ends: dict[Where, tuple[int, int]],
    group: tuple[str, int],
    view: KafkaView,
) -> HandlerProgress:
    checkpoints = rows.checkpoints.get(spec.name, {})
    kind = spec.kind or _kind_from_store(spec.name, rows, bool(committed))
    partitions = [where for where in ends if where[0] in topics]
    plans = []
    for where in partitions:
        start, end = ends[where]
        checkpoint = checkpoints.get(where)
        position = checkpoint[0] if checkpoint else committed.get(where)
        plans.append(
            ToRead(
                *where,
                start=position if position is not None else start,
                end=end,
                look_back=checkpoint is None and position is not None and position > start,
            )
        )
    readings = view.read_positions(plans)
    lags = tuple(
        _partition(plan, committed.get(where), checkpoints.get(where), readings[where])
        for where, plan in zip(partitions, plans, strict=True)
    )
    process_manager = kind == "process manager"
    leader = rows.leader(spec.name)
    standbys = rows.standbys(spec.name)
    return HandlerProgress(
        spec.name,
        kind,
        _mode(kind, bool(checkpoints), bool(committed)),
        spec.consistency or ("strong" if spec.name in rows.strong else "eventual"),
        group[0],
        group[1],
        lags,
        rows.parked.get(spec.name, 0),
        rows.instances.get(spec.name, 0) if process_manager else None,
        rows.scheduled.get(spec.name, 0) if process_manager else None,
        spec.ordering or ("global" if leader or standbys else None),
        leader,
        *rows.stopped.get(spec.name, ("", "")),
        standbys,
    )


def _partition(
    plan: ToRead, committed: int | None, checkpoint: tuple[int, int] | None, reading: Reading
) -> PartitionLag:
    position = checkpoint[0] if checkpoint else committed
    if checkpoint is not None:
        last, note = checkpoint[1], ""
    elif position is None or not plan.look_back:
        last, note = None, "nothing handled yet"
    elif reading.last_event_number is None:
        last, note = None, "no event in the offsets just before the position (aborted or removed)"
    else:
        last, note = reading.last_event_number, ""
    return PartitionLag(
        plan.topic,
        plan.partition,
        position=position,
        committed=committed,
        checkpoint=checkpoint[0] if checkpoint else None,
        end=plan.end,
        lag=reading.lag,
        lag_exact=reading.exact,
        last_event_number=last,
        note=note,
    )


def _kind_from_store(name: str, rows: _StoreRows, has_offsets: bool) -> Kind | None:
    if name in rows.instances or name in rows.scheduled:
        return "process manager"
    if name in rows.checkpoints:
        return None  # a projection or a process manager with no instance now: the tables cannot tell
    if has_offsets and name in rows.subscribed:
        return "handler"  # projections checkpoint before their group commits: this one never did
    return None


def _mode(kind: Kind | None, has_checkpoints: bool, has_offsets: bool) -> Mode | None:
    if kind in ("projection", "process manager") or has_checkpoints:
        return "exactly-once"
    if kind == "handler" or has_offsets:
        return "at-least-once"
    return None
