"""Fixtures of the event store's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from eventstore.relay import Relay


@pytest.fixture
def relays() -> Iterator[list[Relay]]:
    """Relays started by the test, stopped at its end whatever happens."""
    started: list[Relay] = []
    yield started
    for relay in started:
        relay.stop()
