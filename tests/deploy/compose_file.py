"""A Compose file loaded as ``docker compose`` loads it, as far as the deployment checks need.

Compose reads the YAML, then interpolates ``${VAR}`` in its values: ``$$`` is a literal ``$``,
``${VAR:-default}`` (unset or empty) and ``${VAR-default}`` (unset) give defaults, ``${VAR:?message}``
and ``${VAR?message}`` refuse to go on, and an unset variable without a default becomes empty (with a
warning). YAML anchors and merge keys (``<<: *anchor``) are plain YAML, resolved by the loader.

Example::

    compose = load(Path("docker-compose.yml"), {"POSTGRES_PASSWORD": "s3cret"})
    compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]   # "s3cret"
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Reference", "interpolate", "load", "read", "references"]

_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<word>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)

Reference = tuple[str, str | None]
"""A variable's name and its operator (``:-``, ``-``, ``:?``, ``?``, or None for none)."""


def references(document: Any) -> list[Reference]:
    """Every variable the values of ``document`` (a Compose file as read) refer to; ``$$`` is not one."""
    return [
        (m.group("braced") or m.group("bare"), m.group("op"))
        for text in _strings(document)
        for m in _REFERENCE.finditer(text)
        if not m.group("escaped")
    ]


def interpolate(text: str, env: dict[str, str]) -> str:
    """``text`` with its variables replaced from ``env``, as Compose does.

    Raises:
        ValueError: a ``${VAR:?message}`` or ``${VAR?message}`` whose variable is missing.
    """

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("bare")
        op, word = match.group("op"), match.group("word") or ""
        value = env.get(name)
        if op in {":-", ":?"} and value == "":
            value = None
        if value is not None:
            return value
        if op in {":?", "?"}:
            raise ValueError(f"{name} is required: {word}")
        return word if op in {":-", "-"} else ""

    return _REFERENCE.sub(substitute, text)


def read(path: Path) -> dict[str, Any]:
    """The Compose file at ``path`` as YAML, anchors and merge keys resolved, not interpolated."""
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), path
    return document


def load(path: Path, env: dict[str, str]) -> dict[str, Any]:
    """The Compose file at ``path``, its values interpolated with ``env``."""

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return interpolate(node, env)
        if isinstance(node, dict):
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    document: dict[str, Any] = walk(read(path))
    return document


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []
