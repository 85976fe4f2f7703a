"""Imports only go down: workers -> tidings -> eventstore (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"eventstore": {"tidings", "workers"}, "tidings": {"workers"}, "workers": set()}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_only_go_down(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_top_levels(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
        if _imported_top_levels(path) & FORBIDDEN[package]
    }
    assert offenders == {}


def test_only_the_relay_reaches_for_kafka_in_eventstore() -> None:
    # The store itself knows bytes, not Kafka: only the relay, its reading of the topics' tails and its
    # checking of their message size limits do, and the command sender that runs beside it.
    users = {
        str(p.relative_to(ROOT / "eventstore"))
        for p in (ROOT / "eventstore").rglob("*.py")
        if "confluent_kafka" in _imported_top_levels(p)
    }
    assert users == {"relay.py", "kafka_tail.py", "kafka_limits.py", "command_sender.py"}
