"""Services that outlive the command that started them: ``tidings dev up | down | status``.

``dev up`` starts a local PostgreSQL and a local Kafka (or reuses the ones already up), records them in
``<runs root>/dev.json`` and returns the URLs to export. Later shells and processes use them through
``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS``. ``dev down`` stops them; ``dev status`` checks that they
still answer. Always the local route: containers started by testcontainers die with their starter.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg

from tidings.devservices.local_kafka import LocalKafka, wait_for_kafka
from tidings.devservices.local_postgres import LocalPostgres, find_postgres_bindir
from tidings.devservices.provide import check_local_prerequisites
from tidings.devservices.runs import runs_root, sweep_stale_runs

__all__ = ["DevServices", "dev_down", "dev_status", "dev_up", "state_path"]


def state_path() -> Path:
    return runs_root() / "dev.json"


@dataclass(frozen=True, slots=True)
class DevServices:
    """The detached services as recorded in the state file."""

    database_url: str
    kafka_bootstrap_servers: str
    postgres_run_dir: str
    postgres_bindir: str
    postgres_port: int
    kafka_run_dir: str
    kafka_pid: int
    kafka_port: int

    def exports(self) -> dict[str, str]:
        return {"DATABASE_URL": self.database_url, "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers}

    def _postgres(self) -> LocalPostgres:
        return LocalPostgres(
            detached=True,
            bindir=Path(self.postgres_bindir),
            run_dir=Path(self.postgres_run_dir),
            port=self.postgres_port,
        )

    def _kafka(self) -> LocalKafka:
        return LocalKafka(
            detached=True,
            java="java",
            run_dir=Path(self.kafka_run_dir),
            port=self.kafka_port,
            pid=self.kafka_pid,
        )


def _read_state() -> DevServices | None:
    try:
        return DevServices(**json.loads(state_path().read_text()))
    except (OSError, ValueError, TypeError):
        return None


def dev_up() -> DevServices:
    """Start the detached services, or return the recorded ones if both still run.

    Raises:
        MissingPrerequisite, ServiceStartFailed: as for the local route of ``tidings.devservices``.
    """
    current = _read_state()
    if current is not None:
        health = dev_status()
        if all(health.values()):
            return current
        dev_down()
    # Dev services are always local: check both before starting either.
    check_local_prerequisites("postgres")
    check_local_prerequisites("kafka")
    sweep_stale_runs()
    pg = LocalPostgres(detached=True, bindir=find_postgres_bindir())
    pg.start()
    try:
        broker = LocalKafka(detached=True)
        broker.start()
    except BaseException:
        pg.stop()
        raise
    state = DevServices(
        pg.url,
        broker.bootstrap_servers,
        str(pg.run_dir),
        str(pg.bindir),
        pg.port,
        str(broker.run_dir),
        broker.pid,
        broker.port,
    )
    tmp = state_path().with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    os.replace(tmp, state_path())
    return state


def dev_down() -> bool:
    """Stop the detached services; False when none were recorded."""
    state = _read_state()
    if state is None:
        return False
    state._kafka().stop()
    state._postgres().stop()
    state_path().unlink(missing_ok=True)
    return True


def dev_status() -> dict[str, bool]:
    """For each recorded service, whether it answers now. Empty when ``dev up`` has not run."""
    state = _read_state()
    if state is None:
        return {}
    return {"postgres": _postgres_answers(state.database_url), "kafka": _kafka_answers(state)}


def _postgres_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def _kafka_answers(state: DevServices) -> bool:
    if not state._kafka().is_running():
        return False
    try:
        wait_for_kafka(state.kafka_bootstrap_servers, timeout=5)
    except TimeoutError:
        return False
    return True
