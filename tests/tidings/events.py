"""Event classes shared by the codec tests, defined at module level so that their names are stable."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import Enum, IntEnum

from tidings import TypeRegistry


class Currency(Enum):
    EUR = "EUR"
    USD = "USD"
    JPY = "JPY"


class Priority(IntEnum):
    LOW = 1
    HIGH = 2


@dataclass(frozen=True)
class Address:
    street: str
    city: str
    postcode: str | None = None


@dataclass(frozen=True)
class Owner:
    name: str
    address: Address
    born: date


@dataclass(frozen=True)
class AccountOpened:
    account_id: uuid.UUID
    owner: Owner
    opened_at: datetime
    currency: Currency
    overdraft: Decimal = Decimal("0")
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Everything:
    """One field of every supported kind, for the round-trip properties."""

    text: str
    count: int
    ratio: float
    flag: bool
    nothing: None
    maybe: int | None
    numbers: list[int]
    names: tuple[str, ...]
    pair: tuple[int, str]
    scores: dict[str, float]
    owner: Owner
    owners: list[Owner]
    ident: uuid.UUID
    at: datetime
    day: date
    amount: Decimal
    currency: Currency
    priority: Priority
    ledger: dict[str, list[Decimal]]
    maybe_at: datetime | None
    maybe_owner: Owner | None = None
    note: str = field(default="")


def registry() -> TypeRegistry:
    """A registry with the shared events, fresh for each test that may add to it."""
    fresh = TypeRegistry()
    fresh.register(AccountOpened)
    fresh.register(Everything)
    return fresh
