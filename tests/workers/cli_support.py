"""Running ``tidings worker`` (and the operator commands) as a user does, in processes of their own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.support import tidings_script
from tidings.pytest_plugin import KafkaNamespace, PostgresSchema

__all__ = ["ROOT", "WorkerProcess", "assigned", "count", "rows", "tidings", "worker_env"]

ROOT = Path(__file__).resolve().parents[2]
"""The checkout: commands run from here, so ``tests.workers.apps`` is importable as a user's module is."""


def worker_env(schema: PostgresSchema, kafka: KafkaNamespace, app_name: str, **extra: str) -> dict[str, str]:
    """The environment of a worker (and of the operator commands) for the app of ``tests.workers.apps``."""
    return {
        **os.environ,
        "DATABASE_URL": schema.server_url,
        "TIDINGS_SCHEMA": schema.name,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "TIDINGS_TEST_APP_NAME": app_name,
        "TIDINGS_TEST_PREFIX": kafka.prefix,
        "COLUMNS": "400",  # Rich tables with a row on one line, whatever the terminal
        **extra,
    }


def tidings(
    *args: str, env: dict[str, str], input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``tidings ARGS`` to its end (``input`` on its stdin)."""
    return subprocess.run(
        [tidings_script(), *args],
        env=env,
        input=input,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class WorkerProcess:
    """``tidings worker ARGS`` in a process of its own, logging JSON lines to ``log_path``."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115  # closed by terminate()/kill()
        self.process = subprocess.Popen(
            [tidings_script(), "worker", *args, "--port", "0", "--host", "127.0.0.1"],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._port: int | None = None

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *_: object) -> None:
        if self.process.poll() is None:  # the test failed: leave the group cleanly if possible
            try:
                self.terminate(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]

    @property
    def port(self) -> int:
        """The probes' port, from the worker's log (it was started with --port 0)."""
        deadline = time.monotonic() + 30
        while self._port is None:
            assert self.process.poll() is None, f"the worker exited: {self.log_path.read_text()}"
            assert time.monotonic() < deadline, f"no probes port logged: {self.log_path.read_text()}"
            for line in self.lines():
                if line["message"].startswith("serving /healthz"):
                    self._port = int(line["port"])
            time.sleep(0.05)
        return self._port

    def get(self, path: str) -> tuple[int, bytes]:
        """GET ``path`` from the worker's probes: (status, body)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def readiness(self) -> tuple[int, dict[str, Any]]:
        status, body = self.get("/readyz")
        return status, json.loads(body)

    def ready(self) -> bool:
        return self.readiness()[0] == 200

    def terminate(self, timeout: float = 45) -> int:
        """SIGTERM, and the exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(30)
        if not self._log.closed:
            self._log.close()


def assigned(worker: WorkerProcess) -> list[str]:
    """The partitions the worker's (only) handler has now."""
    return list(worker.readiness()[1]["handlers"][0]["assigned"])


def rows(url: str, schema: str, table: str, columns: str = "*", order: str = "1") -> list[tuple[Any, ...]]:
    """Every row of ``schema.table`` (``columns``, ordered by ``order``)."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                sql.SQL(columns), sql.Identifier(schema, table), sql.SQL(order)
            )
        ).fetchall()


def count(url: str, schema: str, table: str) -> int:
    return len(rows(url, schema, table))
