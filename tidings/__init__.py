"""tidings: event-sourced, CQRS applications on PostgreSQL and Apache Kafka, after Elixir's Commanded.

The programming model and the write side live here; the PostgreSQL store is ``eventstore`` and the
Kafka runtime is ``workers``. ``tidings.devservices`` provides real services for development and tests.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
