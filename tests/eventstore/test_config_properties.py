"""Properties of the store's configuration helpers."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from hypothesis import given
from hypothesis import strategies as st

from eventstore import ConfigurationError, StoreConfig, redact_url, validate_schema

SAFE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@given(st.text(min_size=0, max_size=80))
def test_a_schema_name_is_accepted_exactly_when_it_is_a_plain_identifier(name: str) -> None:
    plain = bool(SAFE.fullmatch(name)) and not name.startswith("pg_")
    try:
        validate_schema(name)
    except ConfigurationError:
        accepted = False
    else:
        accepted = True
    assert accepted == plain


@given(
    user=st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
    password=st.text(
        alphabet=st.characters(blacklist_characters="@/:?#[]%", blacklist_categories=("Cs",)),
        min_size=4,
        max_size=30,
    ),
)
def test_redaction_never_shows_the_password(user: str, password: str) -> None:
    url = f"postgresql://{user}:{password}@db.example:5432/app"
    redacted = redact_url(url)
    # Structural checks: a plain substring test would trip over passwords such as "post" or "5432".
    assert redacted == f"postgresql://{user}:***@db.example:5432/app"
    assert urlsplit(redacted).password == "***"
    assert repr(StoreConfig(url)) == f"StoreConfig(url={redacted!r}, schema='tidings')"


@given(
    password=st.text(
        alphabet=st.characters(blacklist_characters="'\\ &#", blacklist_categories=("Cs", "Cc", "Z")),
        min_size=4,
        max_size=30,
    ),
    quoted=st.booleans(),
)
def test_redaction_covers_key_value_conninfo_and_query_parameters(password: str, quoted: bool) -> None:
    value = f"'{password}'" if quoted else password
    assert redact_url(f"host=db user=app password={value} dbname=app") == (
        "host=db user=app password=*** dbname=app"
    )
    assert redact_url(f"postgresql://app@db/app?password={password}&sslmode=require") == (
        "postgresql://app@db/app?password=***&sslmode=require"
    )
