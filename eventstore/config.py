"""Where a store lives: a PostgreSQL URL and the schema that holds its tables.

Several stores (one per tenant, one per test) share a database by living in different schemas. The
schema name comes from configuration, so it is validated here and only ever reaches SQL through
``psycopg.sql.Identifier`` or SQLAlchemy's quoting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from eventstore.errors import ConfigurationError

__all__ = ["DEFAULT_SCHEMA", "StoreConfig", "redact_url", "sqlalchemy_url", "validate_schema"]

DEFAULT_SCHEMA = "tidings"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def validate_schema(name: str) -> str:
    """Return ``name`` if it is a safe, unquoted-style PostgreSQL identifier.

    Raises:
        ConfigurationError: the name has other characters, is empty, longer than 63 bytes, or starts
            with ``pg_`` (reserved for the system).
    """
    if not _SCHEMA_NAME.fullmatch(name) or name.startswith("pg_"):
        raise ConfigurationError(
            f"invalid schema name {name!r}: use lower-case letters, digits and underscores, start with a "
            "letter or underscore, at most 63 characters, not starting with pg_"
        )
    return name


_PASSWORD_PARAMETER = re.compile(r"""(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)""")


def redact_url(url: str) -> str:
    """The URL (or key=value conninfo) with any password replaced, fit for logs and error messages."""
    if "://" not in url:
        return _PASSWORD_PARAMETER.sub(r"\1***", url)
    parts = urlsplit(url)
    # A password may also come as a query parameter (?password=...).
    parts = parts._replace(query=_PASSWORD_PARAMETER.sub(r"\1***", parts.query))
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1))
    return urlunsplit(parts)


def sqlalchemy_url(url: str) -> str:
    """A libpq URL (``postgresql://...``) in the form SQLAlchemy's psycopg 3 dialect expects.

    Raises:
        ConfigurationError: not a PostgreSQL URL.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgres", "postgresql", "postgresql+psycopg"):
        raise ConfigurationError(f"not a PostgreSQL URL: {redact_url(url)}")
    return f"postgresql+psycopg://{rest}"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """A store's location and limits.

    Example::

        StoreConfig(os.environ["DATABASE_URL"], schema="bank")

    Attributes:
        max_event_bytes: largest data + metadata of one event; larger appends fail whole.
        allow_hard_delete: whether ``delete_stream(hard=True)`` may remove events (erasure requests).
        idle_in_transaction_timeout: the store's own sessions are ended by PostgreSQL when idle in a
            transaction this long (seconds), so they cannot hold back sequencing for longer.
        statement_timeout: the longest statement the store's sessions may run (seconds).
        pool_size: connections kept by the store.
        leader_url: a session-mode PostgreSQL URL (Commanded's ``session_mode_url``) on which every
            leadership of this store takes its advisory lock (relays, repartitioning relays, global-order
            handlers), for when ``url`` goes through PgBouncer in transaction mode, where a session-level
            lock is not kept. It must reach the same database. Default: ``url``.
    """

    url: str
    schema: str = DEFAULT_SCHEMA
    max_event_bytes: int = 1024 * 1024
    allow_hard_delete: bool = False
    idle_in_transaction_timeout: float = 10.0
    statement_timeout: float = 30.0
    pool_size: int = 10
    leader_url: str | None = None

    def __post_init__(self) -> None:
        validate_schema(self.schema)
        sqlalchemy_url(self.url)
        if self.leader_url is not None:
            sqlalchemy_url(self.leader_url)
        if self.max_event_bytes <= 0:
            raise ConfigurationError(f"max_event_bytes must be positive, got {self.max_event_bytes}")
        if self.idle_in_transaction_timeout <= 0 or self.statement_timeout <= 0:
            raise ConfigurationError(
                "idle_in_transaction_timeout and statement_timeout must be positive seconds"
            )
        if self.pool_size < 1:
            raise ConfigurationError(f"pool_size must be at least 1, got {self.pool_size}")

    @property
    def leadership_url(self) -> str:
        """Where leaderships take their advisory locks: ``leader_url``, else the store's ``url``."""
        return self.leader_url or self.url

    def __repr__(self) -> str:
        leader = f", leader_url={redact_url(self.leader_url)!r}" if self.leader_url else ""
        return f"StoreConfig(url={redact_url(self.url)!r}, schema={self.schema!r}{leader})"
