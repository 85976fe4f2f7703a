"""The router: which aggregate (or command handler) takes each command type, and which instance.

Example::

    router = Router()
    router.identify(BankAccount, by="account_id", prefix="account-")
    router.dispatch([OpenAccount, Deposit, Withdraw], to=BankAccount)
    router.dispatch(RequestTransfer, to=BankAccount, identity="source_account_id", timeout=5.0)

    app_router = Router.compose(accounts_router, transfers_router)

A registration names the aggregate class, the identity (a command field, or a function of the command),
an identity prefix (a string or a function returning one) that makes the stream id, and per-command
options: timeout, consistency, and the aggregate's lifespan in the cache. Registering a command type twice
raises at once; dispatching an unregistered one raises ``UnregisteredCommand``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from eventstore import InvalidStreamId, validate_stream_id
from tidings.errors import DuplicateRegistration, InvalidIdentity, UnregisteredCommand

__all__ = ["CommandHandler", "Consistency", "Identity", "Registration", "Router"]

Identity = str | Callable[[Any], object]
"""A command's field name, or a function of the command, giving the aggregate's identity."""
Prefix = str | Callable[[], str]
Consistency = Literal["eventual", "strong"] | list[str]
"""``eventual``, ``strong`` (every strongly consistent handler), or the names of the handlers to wait for."""


class CommandHandler(Protocol):
    """A command handler between the router and an aggregate: ``handle(aggregate, command)`` returns what
    ``execute`` would (events, a ``Multi``, ``None``), or raises. For commands that need a service's
    answer before the aggregate decides, computed without I/O into the aggregate's state."""

    def handle(self, aggregate: Any, command: Any) -> Any: ...


@dataclass(frozen=True)
class Registration:
    """One command type's route."""

    command: type
    aggregate: type
    identity: Identity
    prefix: Prefix | None = None
    handler: CommandHandler | None = None
    timeout: float | None = None
    consistency: Consistency | None = None
    lifespan: float | None = None
    """Seconds the aggregate stays cached after this command (None: the application's default)."""

    def stream_id(self, command: object) -> str:
        """The aggregate's stream: the prefix and the identity the command carries.

        Raises:
            InvalidIdentity: the identity is missing, empty, of the wrong type, or not a valid stream id.
        """
        identity = self.identity
        value = identity(command) if callable(identity) else getattr(command, identity, None)
        if isinstance(value, uuid.UUID | int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            where = self.identity if isinstance(self.identity, str) else "the identity function"
            raise InvalidIdentity(
                command, f"{where} gave {value!r}; an identity is a non-empty str, int or UUID"
            )
        prefix = self.prefix() if callable(self.prefix) else (self.prefix or "")
        try:
            return validate_stream_id(prefix + value)
        except InvalidStreamId as exc:
            raise InvalidIdentity(command, str(exc)) from None


class Router:
    """Command types to their routes; routers compose."""

    def __init__(self) -> None:
        self._routes: dict[type, Registration] = {}
        self._identities: dict[type, tuple[Identity, Prefix | None]] = {}

    def identify(self, aggregate: type, *, by: Identity, prefix: Prefix | None = None) -> None:
        """The identity and prefix of every later registration to ``aggregate`` that gives none."""
        self._identities[aggregate] = (by, prefix)

    def dispatch(
        self,
        commands: type | Iterable[type],
        *,
        to: type | CommandHandler,
        aggregate: type | None = None,
        identity: Identity | None = None,
        identity_prefix: Prefix | None = None,
        timeout: float | None = None,
        consistency: Consistency | None = None,
        lifespan: float | None = None,
    ) -> None:
        """Route ``commands`` to an aggregate class (``to=BankAccount``), or to a command handler
        for an aggregate (``to=handler, aggregate=BankAccount``).

        Raises:
            DuplicateRegistration: a command type already has a route.
            TypeError: no identity, here or from ``identify``.
        """
        handler: CommandHandler | None = None
        if aggregate is None:
            if not isinstance(to, type):
                raise TypeError("a command handler needs aggregate=<the aggregate class it works on>")
            aggregate = to
        elif isinstance(to, type):
            raise TypeError(
                "with aggregate=..., `to` is a command handler instance with handle(aggregate, command)"
            )
        else:
            handler = to
        default_identity, default_prefix = self._identities.get(aggregate, (None, None))
        identity = identity if identity is not None else default_identity
        if identity is None:
            raise TypeError(
                f"no identity for {aggregate.__qualname__}: pass identity=<field or function>, or call "
                f"router.identify({aggregate.__qualname__}, by=...)"
            )
        prefix = identity_prefix if identity_prefix is not None else default_prefix
        for command in [commands] if isinstance(commands, type) else list(commands):
            if command in self._routes:
                raise DuplicateRegistration(command)
            self._routes[command] = Registration(
                command, aggregate, identity, prefix, handler, timeout, consistency, lifespan
            )

    def route(self, command: object) -> Registration:
        """The registration for ``command``'s type.

        Raises:
            UnregisteredCommand: nobody routes it.
        """
        registration = self._routes.get(type(command))
        if registration is None:
            raise UnregisteredCommand(type(command))
        return registration

    def commands(self) -> list[type]:
        return list(self._routes)

    def include(self, other: Router) -> None:
        """Take every route of ``other``.

        Raises:
            DuplicateRegistration: both route a command type.
        """
        for command, registration in other._routes.items():
            if command in self._routes:
                raise DuplicateRegistration(command)
            self._routes[command] = registration

    @classmethod
    def compose(cls, *routers: Router) -> Router:
        """One router with every route of ``routers`` (Commanded's composite router)."""
        composed = cls()
        for router in routers:
            composed.include(router)
        return composed
