"""The PostgreSQL event store: bytes in, bytes out, in a gapless global order.

Knows no domain class, handler or codec; ``tidings`` builds on it, never the other way round.
"""

from eventstore.config import DEFAULT_SCHEMA, StoreConfig, redact_url, sqlalchemy_url, validate_schema
from eventstore.errors import ConfigurationError, EventStoreError
from eventstore.migrate import current_revision, head_revision, migrate

__all__ = [
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
    # errors
    "ConfigurationError",
    "EventStoreError",
]
