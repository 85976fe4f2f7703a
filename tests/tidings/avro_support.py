"""Shared by the Avro tests: the bank events as hypothesis strategies, and schema directories in tmp."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from examples.bank import events as bank

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"

# Avro's timestamp-micros carries microseconds; decimals here have precision 18, scale 2.
moments = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))
money = st.decimals(
    min_value=Decimal("-9999999999999999.99"),
    max_value=Decimal("9999999999999999.99"),
    places=2,
    allow_nan=False,
    allow_infinity=False,
)
text = st.text(max_size=40)
reasons = st.sampled_from(bank.RejectionReason)

bank_events = st.one_of(
    st.builds(
        bank.AccountOpened,
        st.uuids(),
        text,
        st.sampled_from(["EUR", "USD", "CHF"]),
        moments,
        money,
        st.lists(text, max_size=3),
    ),
    st.builds(bank.MoneyDeposited, st.uuids(), money, money, moments, st.none() | st.uuids()),
    st.builds(bank.MoneyWithdrawn, st.uuids(), money, money, moments, st.none() | st.uuids()),
    st.builds(bank.DepositRejected, st.uuids(), st.uuids(), reasons, moments),
    st.builds(
        bank.AccountClosed,
        st.uuids(),
        st.dates(min_value=date(1900, 1, 1), max_value=date(2200, 1, 1)),
        st.dictionaries(text, text, max_size=3),
    ),
    st.builds(bank.TransferRequested, st.uuids(), st.uuids(), st.uuids(), money, moments, st.none() | text),
    st.builds(bank.TransferCompleted, st.uuids(), moments),
    st.builds(bank.TransferFailed, st.uuids(), reasons, moments, st.booleans()),
)


def write_schema(root: Path, schema: dict[str, Any], version: int) -> Path:
    """Write ``schema`` as ``root/<namespace>/<name>/v<version>.avsc``."""
    path = root / schema["namespace"] / schema["name"] / f"v{version}.avsc"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema, indent=2), encoding="utf-8")
    return path
