"""The PostgreSQL event store: bytes in, bytes out, in a gapless global order.

Knows no domain class, handler or codec; ``tidings`` builds on it, never the other way round.

Example::

    from eventstore import NO_STREAM, EventData, PostgresEventStore, StoreConfig, migrate

    config = StoreConfig(os.environ["DATABASE_URL"], schema="bank")
    migrate(config)
    with PostgresEventStore(config) as store:
        store.append_to_stream("account-1", NO_STREAM, [EventData("AccountOpened", b"{}")])
"""

from eventstore.config import DEFAULT_SCHEMA, StoreConfig, redact_url, sqlalchemy_url, validate_schema
from eventstore.errors import (
    ConcurrencyError,
    ConfigurationError,
    DeadlineExceeded,
    DuplicateEvent,
    EmptyAppend,
    EventFieldTooLong,
    EventStoreError,
    HardDeleteDisabled,
    InvalidStreamId,
    PayloadTooLarge,
    PoolExhausted,
    StoreMoved,
    StoreUnavailable,
    StreamDeleted,
    StreamExists,
    StreamNotFound,
    TransactionConflict,
    WrongExpectedVersion,
)
from eventstore.ids import new_event_id
from eventstore.kafka_limits import TopicLimitTooSmall
from eventstore.kafka_tail import TailUnreadable, TailUnsettled
from eventstore.migrate import current_revision, head_revision, migrate
from eventstore.postgres import END, PostgresEventStore
from eventstore.rebase import Rebase, rebase
from eventstore.records import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    EventData,
    ExpectedVersion,
    RecordedEvent,
    SnapshotData,
    StreamInfo,
)
from eventstore.relay import Relay, RelayConfig, RelayStatus, TopicCreationFailed, TopicMissing, relay_status
from eventstore.relay_position import InvalidResumePoint, resume_after
from eventstore.relay_problems import (
    EventUnpublishable,
    EventUnroutable,
    ForeignMessages,
    KafkaAheadOfStore,
    RelayProblem,
    TailMismatch,
    TailUnconfirmed,
)
from eventstore.routing import Route, Routing
from eventstore.sequencer import Sequencer, SequencerStatus
from eventstore.streams import validate_stream_id

__all__ = [
    # the store
    "PostgresEventStore",
    "Sequencer",
    "SequencerStatus",
    "END",
    # the outbox relay to Kafka
    "Relay",
    "RelayConfig",
    "RelayStatus",
    "Route",
    "Routing",
    "relay_status",
    "resume_after",
    # what stops a relay (eventstore.relay_problems)
    "RelayProblem",
    "EventUnpublishable",
    "EventUnroutable",
    "ForeignMessages",
    "InvalidResumePoint",
    "KafkaAheadOfStore",
    "TailMismatch",
    "TailUnconfirmed",
    "TailUnreadable",
    "TailUnsettled",
    # records
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "EventData",
    "ExpectedVersion",
    "RecordedEvent",
    "SnapshotData",
    "StreamInfo",
    "new_event_id",
    "validate_stream_id",
    # configuration
    "DEFAULT_SCHEMA",
    "StoreConfig",
    "redact_url",
    "sqlalchemy_url",
    "validate_schema",
    # schema migrations
    "current_revision",
    "head_revision",
    "migrate",
    # a store moved to another cluster
    "Rebase",
    "rebase",
    # errors
    "ConcurrencyError",
    "ConfigurationError",
    "DeadlineExceeded",
    "DuplicateEvent",
    "EmptyAppend",
    "EventFieldTooLong",
    "EventStoreError",
    "HardDeleteDisabled",
    "InvalidStreamId",
    "PayloadTooLarge",
    "PoolExhausted",
    "StoreMoved",
    "StoreUnavailable",
    "StreamDeleted",
    "StreamExists",
    "StreamNotFound",
    "TransactionConflict",
    "TopicCreationFailed",
    "TopicLimitTooSmall",
    "TopicMissing",
    "WrongExpectedVersion",
]
