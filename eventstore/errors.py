"""Errors raised by the event store.

EventStoreError
└── ConfigurationError    a URL or schema name from configuration is unusable
"""

from __future__ import annotations

__all__ = ["ConfigurationError", "EventStoreError"]


class EventStoreError(Exception):
    """Base of every error the event store raises."""


class ConfigurationError(EventStoreError, ValueError):
    """A configured value (URL, schema name) is unusable; the message says what is accepted."""
