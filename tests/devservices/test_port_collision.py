"""A port taken between choosing it and binding it costs a retry, not a failed session."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tidings import devservices
from tidings.devservices import local_kafka as kafka_module
from tidings.devservices import local_postgres as postgres_module
from tidings.devservices.runs import free_port


@pytest.fixture
def occupied_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _first_then_free(port: int) -> Callable[[], int]:
    handed_out = [port]

    def choose() -> int:
        return handed_out.pop() if handed_out else free_port()

    return choose


def test_postgres_retries_on_a_taken_port(
    occupied_port: int, monkeypatch: pytest.MonkeyPatch, runs_dir: Path
) -> None:
    monkeypatch.setenv("TIDINGS_RUN_DIR", str(runs_dir))
    monkeypatch.setattr(postgres_module, "free_port", _first_then_free(occupied_port))
    server = devservices.LocalPostgres()
    try:
        url = server.start()
        assert server.port != occupied_port
        assert "could not bind" in server.log_path.read_text()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        server.stop()
    assert not server.data_dir.exists()


def test_kafka_retries_on_a_taken_port(
    occupied_port: int, monkeypatch: pytest.MonkeyPatch, runs_dir: Path
) -> None:
    monkeypatch.setenv("TIDINGS_RUN_DIR", str(runs_dir))
    monkeypatch.setenv("TIDINGS_KAFKA_HEAP", "384m")
    monkeypatch.setattr(kafka_module, "free_port", _first_then_free(occupied_port))
    broker = devservices.LocalKafka()
    try:
        bootstrap = broker.start()
        assert broker.port != occupied_port
        assert "Address already in use" in broker.log_path.read_text()
        devservices.wait_for_kafka(bootstrap, timeout=30)
    finally:
        broker.stop()
    assert not broker.is_running()
    assert not broker.data_dir.exists()
