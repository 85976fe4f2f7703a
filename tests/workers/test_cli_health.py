"""`tidings health` on the real services (`tidings demo`: test_demo.py)."""

from __future__ import annotations

import json
import os
import subprocess

from tests.support import tidings_script
from tidings import devservices
from tidings.pytest_plugin import PostgresSchema


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tidings_script(), *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _env(schema: PostgresSchema, kafka: devservices.Service, store_schema: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": schema.server_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.address,
        "TIDINGS_SCHEMA": store_schema,
    }


def test_health_fails_until_the_store_is_migrated(
    postgres_schema: PostgresSchema, kafka_service: devservices.Service
) -> None:
    env = _env(postgres_schema, kafka_service, f"{postgres_schema.name}_store")

    before = _run("health", "--json", env=env)
    assert before.returncode == 1
    checks = {c["name"]: c for c in json.loads(before.stdout)["checks"]}
    assert checks["postgres"]["ok"]
    assert checks["kafka"]["ok"]
    assert not checks["schema"]["ok"]
    assert "run `tidings migrate`" in checks["schema"]["detail"]

    after = _run("health", "--migrate", "--json", env=env)
    assert after.returncode == 0, after.stdout + after.stderr
    assert json.loads(after.stdout)["ok"] is True


def test_health_reports_an_unreachable_kafka(
    postgres_schema: PostgresSchema, kafka_service: devservices.Service
) -> None:
    env = _env(postgres_schema, kafka_service, f"{postgres_schema.name}_store")
    env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{devservices.runs.free_port()}"
    result = _run("health", "--migrate", "--json", env=env)
    assert result.returncode == 1
    checks = {c["name"]: c["ok"] for c in json.loads(result.stdout)["checks"]}
    assert checks == {"postgres": True, "schema": True, "kafka": False}


def test_health_redacts_the_database_password(kafka_service: devservices.Service) -> None:
    port = devservices.runs.free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"postgresql://app:pa55word@127.0.0.1:{port}/app",
        "KAFKA_BOOTSTRAP_SERVERS": kafka_service.address,
    }
    result = _run("health", env=env)
    assert result.returncode == 1
    assert "pa55word" not in result.stdout + result.stderr
    assert "app:***@" in result.stdout


def test_invalid_schema_is_a_usage_error(postgres_schema: PostgresSchema) -> None:
    env = {**os.environ, "DATABASE_URL": postgres_schema.server_url}
    result = _run("migrate", "--schema", "Robert'); DROP TABLE students;--", env=env)
    assert result.returncode == 2
    assert "invalid schema name" in result.stderr


def test_health_reaches_kafka_with_the_deployments_settings(
    postgres_schema: PostgresSchema, kafka_service: devservices.Service
) -> None:
    # The Helm chart's `helm test` runs `tidings health` with the SASL/TLS settings in TIDINGS_KAFKA_*:
    # a check that ignored them would pass against a plaintext broker the relay cannot use.
    env = _env(postgres_schema, kafka_service, f"{postgres_schema.name}_store")
    env["TIDINGS_KAFKA_SECURITY_PROTOCOL"] = "SSL"
    result = _run("health", "--migrate", "--json", env=env)
    assert result.returncode == 1
    checks = {c["name"]: c["ok"] for c in json.loads(result.stdout)["checks"]}
    assert checks == {"postgres": True, "schema": True, "kafka": False}

    bad = _run("health", "--kafka", "nonsense", env=env)
    assert bad.returncode == 2
    assert "--kafka takes name=value" in bad.stderr
