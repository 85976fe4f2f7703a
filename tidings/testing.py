"""Given/when/then helpers for pure aggregate tests: no store, no broker, no services.

After commanded's Testing guide. A test names the events that happened before (``given``), the command
or commands to decide on (``when``), and what must follow (``then``): the events produced, the error
raised, or the state left. The aggregate starts as ``aggregate_cls()``, the ``given`` events are applied,
and each ``when`` command is executed in turn, its events applied before the next, as the dispatcher does.

Example::

    import uuid
    from datetime import UTC, datetime
    from decimal import Decimal

    from examples.bank.accounts import BankAccount, Deposit, InsufficientFunds, Withdraw
    from examples.bank.events import AccountOpened, MoneyDeposited
    from tidings.testing import assert_error, assert_events, assert_state, given

    ACCOUNT, AT = uuid.uuid4(), datetime(2026, 1, 1, tzinfo=UTC)
    opened = AccountOpened(ACCOUNT, "Ada", "EUR", AT, Decimal("0.00"))


    def test_an_account() -> None:
        assert_events(
            BankAccount,
            given=[opened],
            when=Deposit(ACCOUNT, Decimal("10.00"), AT),
            then=[MoneyDeposited(ACCOUNT, Decimal("10.00"), Decimal("10.00"), AT)],
        )
        assert_error(
            BankAccount,
            given=[opened],
            when=Withdraw(ACCOUNT, Decimal("1"), AT),
            raises=InsufficientFunds,
            match="asked 1",
        )
        assert_state(
            BankAccount,
            given=[opened],
            when=[Deposit(ACCOUNT, Decimal("5"), AT), Deposit(ACCOUNT, Decimal("5"), AT)],
            then=lambda account: account.balance == Decimal("10"),
        )
        # the same, fluently
        given(BankAccount, opened).when(Withdraw(ACCOUNT, Decimal("1"), AT)).raises(InsufficientFunds)

``assert_events`` and ``assert_state`` return the state reached, ``assert_error`` the error raised. A
mismatch raises ``AssertionError`` saying what differed: events index by index (field by field for
dataclasses), the state field by field, the error's type or message. An error raised by ``execute``
where events or a state were expected propagates unchanged, with a note naming the command.
The pytest plugin offers this module as the ``aggregate_test`` fixture.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

from tidings.aggregate import Aggregate, apply_all, produced

__all__ = ["Scenario", "assert_error", "assert_events", "assert_state", "given"]

A = TypeVar("A", bound=Aggregate)
E = TypeVar("E", bound=BaseException)


class Scenario(Generic[A]):
    """An aggregate class, the events it has seen and the commands to run: the fluent form.

    Example::

        given(BankAccount, opened).when(Deposit(ACCOUNT, Decimal("10"), AT)).then(deposited)
    """

    def __init__(
        self, aggregate_cls: type[A], given: Iterable[object] = (), when: Iterable[object] = ()
    ) -> None:
        self.aggregate_cls = aggregate_cls
        self.given = tuple(given)
        self.commands = tuple(when)

    def when(self, *commands: object) -> Scenario[A]:
        """The same scenario with ``commands`` to execute, in order, after any named already."""
        return Scenario(self.aggregate_cls, self.given, self.commands + commands)

    def then(self, *events: object) -> A:
        """Assert the commands produce exactly ``events``, in order; return the state reached.

        Raises:
            AssertionError: other events were produced (the message compares them index by index).
        """
        __tracebackhide__ = True
        state, actual = self._run()
        if actual != list(events):
            raise AssertionError(_events_diff(self.aggregate_cls, list(events), actual))
        return state

    def raises(self, error: type[E], match: str | re.Pattern[str] | None = None) -> E:
        """Assert a command raises ``error`` (whose ``str`` matches ``match``, by ``re.search``); return it.

        The commands run in order; the first to raise is the one checked.

        Raises:
            AssertionError: nothing was raised, another type was, or the message does not match.
        """
        __tracebackhide__ = True
        name = self.aggregate_cls.__qualname__
        try:
            _, actual = self._run()
        except error as exc:
            if match is not None and not re.search(match, str(exc)):
                pattern = match.pattern if isinstance(match, re.Pattern) else match
                raise AssertionError(
                    f"{type(exc).__qualname__} raised as expected, but its message {str(exc)!r} "
                    f"does not match {pattern!r}"
                ) from exc
            return exc
        except Exception as exc:
            raise AssertionError(f"expected {error.__qualname__}, but {name} raised {exc!r}") from exc
        raise AssertionError(
            f"expected {error.__qualname__}, but {name} raised nothing and produced {_listing(actual)}"
        )

    def state(self, expected: A | Callable[[A], bool]) -> A:
        """Assert the state reached equals ``expected``, or that the predicate ``expected`` returns True.

        Raises:
            AssertionError: the state differs (field by field), or the predicate returned anything else.
        """
        __tracebackhide__ = True
        state, _ = self._run()
        if callable(expected) and not isinstance(expected, self.aggregate_cls):
            verdict = expected(state)
            if verdict is not True:
                what = getattr(expected, "__qualname__", repr(expected))
                raise AssertionError(f"state predicate {what} returned {verdict!r}, not True, for {state!r}")
        elif state != expected:
            raise AssertionError(_state_diff(self.aggregate_cls, expected, state))
        return state

    def _run(self) -> tuple[A, list[object]]:
        """The state after ``given`` and every command, and the events the commands produced."""
        __tracebackhide__ = True
        state = apply_all(self.aggregate_cls(), self.given)
        events: list[object] = []
        for number, command in enumerate(self.commands, 1):
            try:
                new = produced(state.execute(command))
            except Exception as exc:
                exc.add_note(
                    f"raised by {self.aggregate_cls.__qualname__}.execute({command!r}), "
                    f"command {number} of {len(self.commands)}, after {len(self.given)} given event(s)"
                )
                raise
            state = apply_all(state, new)
            events.extend(new)
        return state, events


def given(aggregate_cls: type[A], *events: object) -> Scenario[A]:
    """Start a fluent scenario: ``aggregate_cls()`` with ``events`` applied.

    Example::

        given(BankAccount, opened).when(Withdraw(ACCOUNT, Decimal("1"), AT)).raises(InsufficientFunds)
    """
    return Scenario(aggregate_cls, events)


def assert_events(
    aggregate_cls: type[A], *, given: Iterable[object] = (), when: object, then: Sequence[object]
) -> A:
    """Assert that ``when`` (a command, or a list of them) produces exactly ``then``; return the state.

    Example::

        assert_events(BankAccount, given=[opened], when=Deposit(ACCOUNT, Decimal("10"), AT), then=[deposited])

    Raises:
        AssertionError: other events were produced (the message compares them index by index).
    """
    __tracebackhide__ = True
    return Scenario(aggregate_cls, given, _commands(when)).then(*then)


def assert_error(
    aggregate_cls: type[A],
    *,
    given: Iterable[object] = (),
    when: object,
    raises: type[E],
    match: str | re.Pattern[str] | None = None,
) -> E:
    """Assert that executing ``when`` raises ``raises``, its message matching ``match``; return the error.

    Example::

        assert_error(BankAccount, given=[opened], when=Withdraw(ACCOUNT, Decimal("1"), AT),
                     raises=InsufficientFunds, match="asked 1")

    Raises:
        AssertionError: nothing was raised, another type was, or the message does not match.
    """
    __tracebackhide__ = True
    return Scenario(aggregate_cls, given, _commands(when)).raises(raises, match)


def assert_state(
    aggregate_cls: type[A],
    *,
    given: Iterable[object] = (),
    when: object = None,
    then: A | Callable[[A], bool],
) -> A:
    """Assert the state after ``given`` (and ``when``'s events) equals ``then``, or satisfies it; return it.

    Example::

        assert_state(BankAccount, given=[opened, deposited], then=lambda a: a.balance == Decimal("10"))

    Raises:
        AssertionError: the state differs (field by field), or the predicate did not return True.
    """
    __tracebackhide__ = True
    return Scenario(aggregate_cls, given, _commands(when)).state(then)


# --- messages ------------------------------------------------------------------------------------------


def _commands(when: object) -> tuple[object, ...]:
    if when is None:
        return ()
    if isinstance(when, list | tuple):
        return tuple(when)
    return (when,)


def _listing(events: list[object]) -> str:
    return "no events" if not events else "[" + ", ".join(map(repr, events)) + "]"


def _field_differences(expected: Any, actual: Any, actual_word: str) -> list[str]:
    """One line per field that differs, when both are instances of the same dataclass."""
    if type(expected) is not type(actual):
        return [f"expected {type(expected).__qualname__}, {actual_word} {type(actual).__qualname__}"]
    if not dataclasses.is_dataclass(expected):
        return []
    name = type(expected).__qualname__
    return [
        f"{name}.{f.name}: expected {getattr(expected, f.name)!r}, {actual_word} {getattr(actual, f.name)!r}"
        for f in dataclasses.fields(expected)
        if getattr(expected, f.name) != getattr(actual, f.name)
    ]


def _events_diff(aggregate_cls: type[Any], expected: list[object], actual: list[object]) -> str:
    lines = [
        f"{aggregate_cls.__qualname__} produced other events than expected "
        f"(expected {len(expected)}, produced {len(actual)}):"
    ]
    pad = " " * 6
    for index in range(max(len(expected), len(actual))):
        at = f"  [{index}]"
        if index >= len(actual):
            lines.append(f"{at} missing   {expected[index]!r}")
        elif index >= len(expected):
            lines.append(f"{at} extra     {actual[index]!r}")
        elif expected[index] == actual[index]:
            lines.append(f"{at} equal     {actual[index]!r}")
        else:
            differences = _field_differences(expected[index], actual[index], "produced") or ["not equal"]
            lines.append(f"{at} differs   {differences[0]}")
            lines.extend(f"{pad}          {line}" for line in differences[1:])
            lines.append(f"{pad}expected  {expected[index]!r}")
            lines.append(f"{pad}produced  {actual[index]!r}")
    return "\n".join(lines)


def _state_diff(aggregate_cls: type[Any], expected: object, actual: object) -> str:
    differences = _field_differences(expected, actual, "actual") or ["not equal"]
    return "\n".join(
        [f"{aggregate_cls.__qualname__} state differs from the expected state:"]
        + [f"  {line}" for line in differences]
        + [f"  expected  {expected!r}", f"  actual    {actual!r}"]
    )
