"""Shared by the leadership tests: who holds an advisory lock, as PostgreSQL itself says."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql

from eventstore.leadership import lock_key

__all__ = ["Holder", "holders", "login_role", "role_url", "terminate_holders"]


@dataclass(frozen=True)
class Holder:
    """A session holding a leadership's advisory lock."""

    pid: int
    user: str
    application_name: str


def _halves(name: str) -> tuple[int, int]:
    # pg_locks shows a bigint key as its two 32-bit halves (classid, objid).
    key = lock_key(name) & 0xFFFF_FFFF_FFFF_FFFF
    return key >> 32, key & 0xFFFF_FFFF


def holders(url: str, name: str) -> list[Holder]:
    """The sessions of this database holding the advisory lock of the leadership ``name``."""
    high, low = _halves(name)
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT l.pid, a.usename, a.application_name FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid::bigint = %s AND l.objid::bigint = %s",
            (high, low),
        ).fetchall()
    return [Holder(int(pid), str(user), str(app)) for pid, user, app in rows]


def terminate_holders(url: str, name: str) -> list[Holder]:
    """End (``pg_terminate_backend``) the sessions holding the lock of ``name``; return them."""
    found = holders(url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        for holder in found:
            conn.execute("SELECT pg_terminate_backend(%s)", (holder.pid,))
    return found


def role_url(url: str, role: str) -> str:
    """``url`` (``postgresql://user@host:port/db...``) as ``role`` instead of its user."""
    scheme, _, rest = url.partition("://")
    _, at, where = rest.rpartition("@")
    return f"{scheme}://{role}@{where if at else rest}"


@contextmanager
def login_role(url: str) -> Iterator[str]:
    """A new login role of the server (roles are cluster-wide: its name is unique), dropped afterwards:
    a URL as that role is observably not the store's URL."""
    role = f"tidings_leader_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        yield role
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
