"""The Docker route's error translation (the route itself needs an engine, which CI does not have)."""

from __future__ import annotations

import pytest

from tidings.devservices import ServiceStartFailed
from tidings.devservices.containers import _started


class _ContainerThatCannotStart:
    stopped = False

    def start(self) -> None:
        raise ConnectionError("pull access denied for confluentinc/cp-kafka")

    def stop(self) -> None:
        self.stopped = True


class _ContainerThatStarts(_ContainerThatCannotStart):
    def start(self) -> None:
        pass


def test_a_container_that_cannot_start_is_a_service_error_with_a_way_out() -> None:
    with (
        pytest.raises(ServiceStartFailed) as caught,
        _started("kafka", "cp-kafka:8.0.0", _ContainerThatCannotStart()),
    ):
        pass
    message = str(caught.value)
    assert "container cp-kafka:8.0.0 did not start: pull access denied" in message
    assert "TIDINGS_SERVICES=local" in message


def test_a_started_container_is_stopped_even_when_the_block_fails() -> None:
    container = _ContainerThatStarts()
    with pytest.raises(RuntimeError), _started("postgres", "postgres:16-alpine", container):
        raise RuntimeError("test body failed")
    assert container.stopped
