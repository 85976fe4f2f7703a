"""A missing prerequisite fails at once, names itself and says how to get it; nothing is started."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import tidings_script
from tidings import devservices

PROVIDE_KAFKA = "from tidings import devservices\nwith devservices.kafka():\n    pass\n"


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=False)


def _started_anything(env: dict[str, str]) -> list[str]:
    runs = Path(env["TIDINGS_RUN_DIR"])
    return sorted(p.name for p in runs.iterdir()) if runs.exists() else []


def test_missing_java_is_named_with_its_remedy(
    local_env: dict[str, str], path_with: Callable[..., str]
) -> None:
    local_env["PATH"] = path_with("mvn", "runuser")
    result = _run([sys.executable, "-c", PROVIDE_KAFKA], local_env)
    assert result.returncode != 0
    assert "MissingPrerequisite: missing prerequisite: java." in result.stderr
    assert "openjdk-17" in result.stderr
    assert "KAFKA_BOOTSTRAP_SERVERS" in result.stderr
    assert _started_anything(local_env) == []


def test_cli_dev_up_without_java_exits_3_before_starting_postgres(
    local_env: dict[str, str], path_with: Callable[..., str]
) -> None:
    local_env["PATH"] = path_with("mvn", "runuser")
    result = _run([tidings_script(), "dev", "up"], local_env)
    assert result.returncode == 3, result.stderr
    assert "missing prerequisite: java" in result.stderr
    assert result.stdout == ""  # nothing to export
    assert _started_anything(local_env) == []


def test_missing_maven_matters_only_when_the_jars_are_not_cached(
    local_env: dict[str, str], path_with: Callable[..., str], tmp_path: Path
) -> None:
    local_env["PATH"] = path_with("java", "runuser")
    local_env["TIDINGS_CACHE_DIR"] = str(tmp_path / "empty-cache")
    result = _run([sys.executable, "-c", PROVIDE_KAFKA], local_env)
    assert result.returncode != 0
    assert "missing prerequisite: mvn (Apache Maven)" in result.stderr
    assert "apt-get install maven" in result.stderr
    assert _started_anything(local_env) == []


def test_java_older_than_17_is_refused(local_env: dict[str, str], tmp_path: Path) -> None:
    # A program that answers `-version` like an old JDK: the check must read the version, not just the name.
    bindir = tmp_path / "old-jdk"
    bindir.mkdir()
    java = bindir / "java"
    java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n")
    java.chmod(0o755)
    local_env["PATH"] = f"{bindir}{os.pathsep}{local_env['PATH']}"
    result = _run([sys.executable, "-c", PROVIDE_KAFKA], local_env)
    assert result.returncode != 0
    assert "missing prerequisite: java >= 17 (found 11" in result.stderr


def test_missing_postgres_binaries(local_env: dict[str, str], tmp_path: Path) -> None:
    local_env["TIDINGS_PG_BINDIR"] = str(tmp_path / "no-postgres-here")
    result = _run([tidings_script(), "demo"], local_env)
    assert result.returncode == 3
    assert "missing prerequisite: PostgreSQL server binaries" in result.stderr
    assert "apt-get install postgresql" in result.stderr
    assert "DATABASE_URL" in result.stderr
    assert _started_anything(local_env) == []


def test_unreachable_database_url_fails_clearly_without_leaking_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = devservices.runs.free_port()  # nothing listens there
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:s3cret-pw@127.0.0.1:{port}/app")
    monkeypatch.setenv("TIDINGS_SERVICE_WAIT", "1")
    with pytest.raises(devservices.ServiceStartFailed) as caught, devservices.postgres():
        pass
    message = str(caught.value)
    assert "DATABASE_URL=postgresql://app:***@127.0.0.1" in message
    assert "s3cret-pw" not in message


def test_unreachable_kafka_bootstrap_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    port = devservices.runs.free_port()
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    monkeypatch.setenv("TIDINGS_SERVICE_WAIT", "2")
    expected = f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port}"
    with pytest.raises(devservices.ServiceStartFailed, match=expected), devservices.kafka():
        pass


def test_unknown_route_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("TIDINGS_SERVICES", "kubernetes")
    with pytest.raises(devservices.ServiceError, match="expected auto, local or docker"):
        devservices.route("postgres")


def test_malformed_heap_is_refused_before_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_KAFKA_HEAP", "lots")
    with pytest.raises(ValueError, match="TIDINGS_KAFKA_HEAP='lots'"):
        devservices.LocalKafka(run_dir=Path("/nonexistent"))


def test_run_dir_the_postgres_account_cannot_reach(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # pytest's tmp_path sits under a mode-700 directory: as root, the postgres account cannot reach it,
    # which must be said plainly; as an ordinary user the server runs as that user and all is well.
    monkeypatch.setenv("TIDINGS_RUN_DIR", str(tmp_path / "runs"))
    server = devservices.LocalPostgres()
    try:
        if os.geteuid() == 0:
            with pytest.raises(devservices.ServiceStartFailed, match="postgres account cannot reach"):
                server.start()
        else:
            server.start()
            assert server.is_running()
    finally:
        server.stop()
