"""Hypothesis strategies for the shared events: every supported field type, datetimes always aware."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import strategies as st

from .events import Address, Currency, Everything, Owner, Priority

# Fixed offsets need no time zone database, and cover what a stored ISO string can say: any offset
# strictly inside a day, down to the microsecond.
offsets = st.timedeltas(min_value=timedelta(hours=-24), max_value=timedelta(hours=24)).filter(
    lambda delta: abs(delta) < timedelta(hours=24)
)
zones = st.just(UTC) | st.builds(timezone, offsets)
# A datetime whose offset is not whole minutes is written in UTC; a day's margin keeps that in range.
aware_datetimes = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=zones,
)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
# NaN is the one Decimal that is not equal to itself, so a round trip cannot be checked by ==.
decimals = st.decimals(allow_nan=False)

addresses = st.builds(Address, street=st.text(), city=st.text(), postcode=st.none() | st.text())
owners = st.builds(Owner, name=st.text(), address=addresses, born=st.dates())

everything = st.builds(
    Everything,
    text=st.text(),
    count=st.integers(),
    ratio=finite_floats,
    flag=st.booleans(),
    nothing=st.none(),
    maybe=st.none() | st.integers(),
    numbers=st.lists(st.integers()),
    names=st.lists(st.text()).map(tuple),
    pair=st.tuples(st.integers(), st.text()),
    scores=st.dictionaries(st.text(), finite_floats),
    owner=owners,
    owners=st.lists(owners, max_size=3),
    ident=st.uuids(),
    at=aware_datetimes,
    day=st.dates(),
    amount=decimals,
    currency=st.sampled_from(Currency),
    priority=st.sampled_from(Priority),
    ledger=st.dictionaries(st.text(), st.lists(decimals, max_size=3), max_size=3),
    maybe_at=st.none() | aware_datetimes,
    maybe_owner=st.none() | owners,
    note=st.text(),
)

json_scalars = st.none() | st.booleans() | st.integers() | finite_floats | st.text()
plain_json = st.recursive(
    json_scalars, lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=20
)
metadata = st.dictionaries(st.text(), plain_json)
