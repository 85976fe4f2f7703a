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


def redact_url(url: str) -> str:
    """The URL with any password replaced, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


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
    """A store's location.

    Example::

        StoreConfig(os.environ["DATABASE_URL"], schema="bank")
    """

    url: str
    schema: str = DEFAULT_SCHEMA

    def __post_init__(self) -> None:
        validate_schema(self.schema)
        sqlalchemy_url(self.url)

    def __repr__(self) -> str:
        return f"StoreConfig(url={redact_url(self.url)!r}, schema={self.schema!r})"
