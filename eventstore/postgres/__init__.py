"""The PostgreSQL implementation of the event store."""

from eventstore.postgres.store import END, PostgresEventStore

__all__ = ["END", "PostgresEventStore"]
