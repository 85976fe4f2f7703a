"""`tidings dev up | status | down`: detached services that later shells use through exported URLs."""

from __future__ import annotations

import json
import subprocess

import psycopg
import pytest

from tests.support import tidings_script
from tidings import devservices


def _tidings(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tidings_script(), *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _exports(stdout: str) -> dict[str, str]:
    pairs = (
        line.removeprefix("export ").split("=", 1)
        for line in stdout.splitlines()
        if line.startswith("export ")
    )
    return dict(pairs)


def test_up_status_down(local_env: dict[str, str]) -> None:
    assert _tidings("dev", "status", env=local_env).returncode == 1  # not up yet

    up = _tidings("dev", "up", env=local_env)
    try:
        assert up.returncode == 0, up.stderr
        exports = _exports(up.stdout)
        assert set(exports) == {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"}

        # The services outlive the command that started them.
        with psycopg.connect(exports["DATABASE_URL"]) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("tidings",)
        devservices.wait_for_kafka(exports["KAFKA_BOOTSTRAP_SERVERS"], timeout=30)

        status = _tidings("dev", "status", "--json", env=local_env)
        assert status.returncode == 0
        assert json.loads(status.stdout) == {"postgres": True, "kafka": True}

        again = _tidings("dev", "up", env=local_env)  # reuses what runs
        assert _exports(again.stdout) == exports
    finally:
        down = _tidings("dev", "down", env=local_env)
    assert down.returncode == 0
    assert _tidings("dev", "status", env=local_env).returncode == 1
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(exports["DATABASE_URL"], connect_timeout=3)
    with pytest.raises(TimeoutError):
        devservices.wait_for_kafka(exports["KAFKA_BOOTSTRAP_SERVERS"], timeout=3)


def test_down_without_up_says_so(local_env: dict[str, str]) -> None:
    result = _tidings("dev", "down", env=local_env)
    assert result.returncode == 0
    assert "nothing to stop" in result.stderr
