"""Handler options given when a worker starts: ``tidings worker APP --set NAME.OPTION=VALUE``.

Commanded lets a handler's options be given at ``start_link(start_from: :current)``; here the class
attributes are the defaults and ``EventHandler.configured(**options)`` is the one mechanism that gives
others at start. This module is its command-line side: ``parse_overrides`` reads ``--set`` pairs into
typed values, and ``WorkerApp.with_overrides`` hands each handler its own through ``configured``, so
what is given at start is checked exactly as a class attribute is (``validate_handler``).

Example::

    overrides = parse_overrides(["welcome-emails.start_from=current", "balances.concurrency=4"])
    app = app.with_overrides(overrides)   # {"welcome-emails": {"start_from": "current"}, ...}

NAME is the handler's name (names may hold dots: the option is what follows the last dot before ``=``).
A value is read as the option's type when it can be (``4`` an int for ``concurrency``, ``true`` a
bool for ``static_membership``, ``none`` None for ``ordering``...) and is otherwise handed on as text,
for ``validate_handler`` to say what the option takes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from workers.handler import PROCESS_MANAGER_OPTIONS, START_OPTIONS, InvalidOverride

__all__ = ["COMMAND_LINE_OPTIONS", "InvalidOverride", "parse_override", "parse_overrides"]

Overrides = dict[str, dict[str, Any]]


def _integer(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return text


def _start_from(text: str) -> Any:
    return text if text in ("origin", "current") else _integer(text)


def _boolean(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    return text


def _optional_text(text: str) -> Any:
    return None if text.lower() in ("none", "") else text


def _seconds(text: str) -> Any:
    if text.lower() in ("none", ""):
        return None
    try:
        return float(text)
    except ValueError:
        return text


COMMAND_LINE_OPTIONS: dict[str, Callable[[str], Any]] = {
    "start_from": _start_from,
    "subscribe_to": str,
    "concurrency": _integer,
    "partition_by": _optional_text,
    "ordering": _optional_text,
    "consistency": str,
    "on_poison": str,
    "max_attempts": _integer,
    "static_membership": _boolean,
    "idle_timeout": _seconds,
    "event_timeout": _seconds,
}
"""What ``--set`` may give, and how each reads its text. ``state`` (any Python value) and a
``partition_by`` function are given in Python only: ``Handler.configured(state=...)``."""

assert set(COMMAND_LINE_OPTIONS) == {*START_OPTIONS, *PROCESS_MANAGER_OPTIONS} - {"state"}

_FORM = "--set takes HANDLER.OPTION=VALUE (e.g. --set welcome-emails.start_from=current)"


def parse_override(pair: str) -> tuple[str, str, Any]:
    """``(handler, option, value)`` of one ``NAME.OPTION=VALUE``.

    Raises:
        InvalidOverride: no ``=``, no handler name or option, or an option ``--set`` cannot give.
    """
    target, sep, text = pair.partition("=")
    name, dot, option = target.strip().rpartition(".")
    if not sep or not dot or not name or not option:
        raise InvalidOverride(f"{_FORM}, got {pair!r}")
    read = COMMAND_LINE_OPTIONS.get(option)
    if read is None:
        hint = " (give it in Python: Handler.configured(state=...))" if option == "state" else ""
        raise InvalidOverride(
            f"--set {pair}: {option!r} is not an option a worker can be given at start{hint}; "
            f"options: {', '.join(COMMAND_LINE_OPTIONS)}"
        )
    return name, option, read(text.strip())


def parse_overrides(pairs: Sequence[str]) -> Overrides:
    """Each handler's options from ``--set`` pairs, in the order given (a later pair wins).

    Raises:
        InvalidOverride: a malformed pair (see ``parse_override``).
    """
    overrides: Overrides = {}
    for pair in pairs:
        name, option, value = parse_override(pair)
        overrides.setdefault(name, {})[option] = value
    return overrides
