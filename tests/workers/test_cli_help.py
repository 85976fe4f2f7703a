"""Every `tidings` command explains itself with an example, and every command that reports speaks JSON."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from typer.main import get_command

from eventstore import head_revision
from tests.workers.cli_support import tidings
from tidings.pytest_plugin import PostgresSchema
from workers.cli import app

DAEMONS = {"worker", "relay"}
"""Long-running processes: they log JSON lines (--log-format json), there is no report to print."""
NOT_REPORTS = {"schemas new"}
"""Prints an Avro schema, which is JSON already."""


def commands() -> Iterator[tuple[str, Any]]:
    def walk(command: Any, path: list[str]) -> Iterator[tuple[str, Any]]:
        subcommands = getattr(command, "commands", None)
        if subcommands is None or (path and command.callback is not None):
            yield " ".join(path), command
        for name, sub in (subcommands or {}).items():
            yield from walk(sub, [*path, name])

    return walk(get_command(app), [])


ALL = dict(commands())


def test_the_walk_finds_every_command() -> None:
    assert {"demo", "status", "events read", "events tail", "relay", "relay status", "worker"} <= set(ALL)
    assert len(ALL) >= 20


@pytest.mark.parametrize("name", sorted(ALL))
def test_each_command_has_help_with_an_example(name: str) -> None:
    result = tidings(*name.split(), "--help", env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert "Example" in result.stdout, f"`tidings {name} --help` shows no example"


@pytest.mark.parametrize("name", sorted(set(ALL) - DAEMONS - NOT_REPORTS))
def test_each_command_that_reports_takes_json(name: str) -> None:
    options = {option for param in ALL[name].params for option in getattr(param, "opts", [])}
    assert "--json" in options, f"`tidings {name}` has no --json for scripts"


def test_json_output_parses(postgres_schema: PostgresSchema) -> None:
    env = {**os.environ, "DATABASE_URL": postgres_schema.server_url}
    schema = f"{postgres_schema.name}_json"
    migrated = tidings("migrate", "--schema", schema, "--json", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert json.loads(migrated.stdout) == {"schema": schema, "revision": head_revision()}
    listed = tidings("parked", "list", "--handler", "nobody", "--schema", schema, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    # Nothing to release is a failure, said on stderr; stdout stays clean for the script.
    released = tidings("parked", "retry", "nobody", "--all", "--schema", schema, "--json", env=env)
    assert released.returncode == 1
    assert released.stdout == ""
    assert "nothing parked for 'nobody'" in released.stderr
