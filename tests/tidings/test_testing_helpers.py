"""tidings.testing: given/when/then helpers on the bank's accounts, passing and failing; no services."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from types import ModuleType

import pytest

import tidings.testing
from examples.bank.accounts import (
    AccountClosedError,
    AccountNotOpen,
    BankAccount,
    CloseAccount,
    Deposit,
    InsufficientFunds,
    OpenAccount,
    RequestTransfer,
    Withdraw,
)
from examples.bank.events import (
    AccountClosed,
    AccountOpened,
    MoneyDeposited,
    MoneyWithdrawn,
    TransferRequested,
)
from tidings.devservices.runs import free_port
from tidings.testing import Scenario, assert_error, assert_events, assert_state, given

AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ACCOUNT = uuid.UUID("00000000-0000-7000-8000-000000000001")
OTHER = uuid.UUID("00000000-0000-7000-8000-000000000002")
TRANSFER = uuid.UUID("00000000-0000-7000-8000-000000000003")

OPENED = AccountOpened(ACCOUNT, "Ada", "EUR", AT, Decimal("50.00"))
DEPOSITED = MoneyDeposited(ACCOUNT, Decimal("10.00"), Decimal("10.00"), AT)


def deposit(amount: str) -> Deposit:
    return Deposit(ACCOUNT, Decimal(amount), AT)


def withdraw(amount: str) -> Withdraw:
    return Withdraw(ACCOUNT, Decimal(amount), AT)


def transfer(amount: str) -> RequestTransfer:
    return RequestTransfer(TRANSFER, ACCOUNT, OTHER, Decimal(amount), "rent", AT)


# --- assert_events -------------------------------------------------------------------------------------


def test_assert_events_on_open_deposit_withdraw_and_close() -> None:
    assert_events(
        BankAccount, when=OpenAccount(ACCOUNT, "Ada", overdraft_limit=Decimal("50"), at=AT), then=[OPENED]
    )
    assert_events(BankAccount, given=[OPENED], when=deposit("10.00"), then=[DEPOSITED])
    assert_events(
        BankAccount,
        given=[OPENED, DEPOSITED],
        when=withdraw("25.00"),
        then=[MoneyWithdrawn(ACCOUNT, Decimal("25.00"), Decimal("-15.00"), AT)],
    )
    assert_events(
        BankAccount,
        given=[OPENED],
        when=CloseAccount(ACCOUNT, AT),
        then=[AccountClosed(ACCOUNT, AT.date(), {"closed_by": "customer"})],
    )


def test_assert_events_takes_both_events_of_a_multi() -> None:
    state = assert_events(
        BankAccount,
        given=[OPENED],
        when=transfer("30.00"),
        then=[
            MoneyWithdrawn(ACCOUNT, Decimal("30.00"), Decimal("-30.00"), AT, TRANSFER),
            TransferRequested(TRANSFER, ACCOUNT, OTHER, Decimal("30.00"), AT, "rent"),
        ],
    )
    assert state.balance == Decimal("-30.00")


def test_each_command_of_when_decides_on_the_state_the_previous_left() -> None:
    state = assert_events(
        BankAccount,
        given=[OPENED],
        when=[deposit("10.00"), withdraw("4.00")],
        then=[DEPOSITED, MoneyWithdrawn(ACCOUNT, Decimal("4.00"), Decimal("6.00"), AT)],
    )
    assert state == BankAccount(ACCOUNT, Decimal("6.00"), Decimal("50.00"))


def test_a_wrong_event_is_shown_field_by_field() -> None:
    with pytest.raises(AssertionError) as failure:
        assert_events(
            BankAccount,
            given=[OPENED],
            when=deposit("10.00"),
            then=[MoneyDeposited(ACCOUNT, Decimal("10.00"), Decimal("99.00"), AT)],
        )
    message = str(failure.value)
    assert "BankAccount produced other events than expected (expected 1, produced 1)" in message
    assert (
        "[0] differs   MoneyDeposited.balance: expected Decimal('99.00'), produced Decimal('10.00')"
        in message
    )
    assert "amount" not in message.splitlines()[1]  # only the fields that differ are named
    assert f"expected  {MoneyDeposited(ACCOUNT, Decimal('10.00'), Decimal('99.00'), AT)!r}" in message
    assert f"produced  {DEPOSITED!r}" in message


def test_missing_extra_and_other_typed_events_are_shown_index_by_index() -> None:
    withdrawn = MoneyWithdrawn(ACCOUNT, Decimal("30.00"), Decimal("-30.00"), AT, TRANSFER)
    with pytest.raises(AssertionError) as failure:
        assert_events(BankAccount, given=[OPENED], when=transfer("30.00"), then=[withdrawn])
    lines = str(failure.value).splitlines()
    assert lines[0].endswith("(expected 1, produced 2):")
    assert lines[1] == f"  [0] equal     {withdrawn!r}"
    assert lines[2].startswith("  [1] extra     TransferRequested(")

    with pytest.raises(AssertionError) as failure:
        assert_events(BankAccount, given=[OPENED], when=deposit("10.00"), then=[DEPOSITED, DEPOSITED])
    assert f"  [1] missing   {DEPOSITED!r}" in str(failure.value)

    closed = AccountClosed(ACCOUNT, AT.date())
    with pytest.raises(
        AssertionError, match=r"\[0\] differs   expected AccountClosed, produced MoneyDeposited"
    ):
        assert_events(BankAccount, given=[OPENED], when=deposit("10.00"), then=[closed])

    with pytest.raises(AssertionError, match=r"expected 0, produced 1"):
        assert_events(BankAccount, given=[OPENED], when=deposit("10.00"), then=[])


def test_a_domain_error_where_events_were_expected_propagates_with_a_note() -> None:
    with pytest.raises(InsufficientFunds) as failure:
        assert_events(BankAccount, given=[OPENED], when=[deposit("1.00"), withdraw("100.00")], then=[])
    (note,) = failure.value.__notes__
    assert note.startswith("raised by BankAccount.execute(Withdraw(")
    assert note.endswith("command 2 of 2, after 1 given event(s)")


# --- assert_error ----------------------------------------------------------------------------------------


def test_assert_error_returns_the_error_raised() -> None:
    error = assert_error(
        BankAccount, given=[OPENED], when=withdraw("50.01"), raises=InsufficientFunds, match=r"asked 50\.01"
    )
    assert isinstance(error, InsufficientFunds)
    assert_error(BankAccount, when=deposit("1.00"), raises=AccountNotOpen, match="open the account first")
    assert_error(
        BankAccount,
        given=[OPENED, AccountClosed(ACCOUNT, AT.date())],
        when=deposit("1.00"),
        raises=AccountClosedError,
    )
    # the second command is decided on the state the first left, and the first error is the one checked
    assert_error(
        BankAccount, given=[OPENED], when=[withdraw("50.00"), transfer("0.01")], raises=InsufficientFunds
    )


def test_a_wrong_error_type_fails_naming_both() -> None:
    with pytest.raises(AssertionError) as failure:
        assert_error(BankAccount, when=withdraw("1.00"), raises=InsufficientFunds)
    assert str(failure.value) == (
        "expected InsufficientFunds, but BankAccount raised AccountNotOpen('open the account first')"
    )
    assert isinstance(failure.value.__cause__, AccountNotOpen)


def test_no_error_fails_showing_what_was_produced() -> None:
    with pytest.raises(AssertionError) as failure:
        assert_error(BankAccount, given=[OPENED], when=deposit("10.00"), raises=InsufficientFunds)
    assert str(failure.value) == (
        f"expected InsufficientFunds, but BankAccount raised nothing and produced [{DEPOSITED!r}]"
    )


def test_a_message_that_does_not_match_fails_quoting_both() -> None:
    with pytest.raises(AssertionError) as failure:
        assert_error(
            BankAccount, given=[OPENED], when=withdraw("60.00"), raises=InsufficientFunds, match="asked 7"
        )
    assert str(failure.value) == (
        "InsufficientFunds raised as expected, but its message "
        "'balance 0.00, overdraft 50.00, asked 60.00' does not match 'asked 7'"
    )


# --- assert_state ----------------------------------------------------------------------------------------


def test_assert_state_compares_or_asks_a_predicate() -> None:
    assert assert_state(BankAccount, then=BankAccount()) == BankAccount()
    assert_state(BankAccount, given=[OPENED], then=BankAccount(ACCOUNT, overdraft_limit=Decimal("50.00")))
    state = assert_state(
        BankAccount,
        given=[OPENED],
        when=[deposit("10.00"), CloseAccount(ACCOUNT, AT)],
        then=lambda account: account.closed and account.balance == Decimal("10.00"),
    )
    assert state.closed


def test_a_different_state_is_shown_field_by_field() -> None:
    expected = BankAccount(ACCOUNT, Decimal("11.00"), Decimal("50.00"))
    with pytest.raises(AssertionError) as failure:
        assert_state(BankAccount, given=[OPENED], when=deposit("10.00"), then=expected)
    assert str(failure.value).splitlines() == [
        "BankAccount state differs from the expected state:",
        "  BankAccount.balance: expected Decimal('11.00'), actual Decimal('10.00')",
        f"  expected  {expected!r}",
        f"  actual    {BankAccount(ACCOUNT, Decimal('10.00'), Decimal('50.00'))!r}",
    ]


def test_a_false_predicate_fails_naming_it_and_the_state() -> None:
    def is_closed(account: BankAccount) -> bool:
        return account.closed

    with pytest.raises(AssertionError) as failure:
        assert_state(BankAccount, given=[OPENED], then=is_closed)
    assert str(failure.value).startswith(
        "state predicate test_a_false_predicate_fails_naming_it_and_the_state.<locals>.is_closed "
        "returned False, not True, for BankAccount("
    )


def test_a_predicate_must_return_true_not_just_something() -> None:
    with pytest.raises(AssertionError, match=r"returned None, not True"):
        assert_state(BankAccount, given=[OPENED], then=lambda account: None)  # type: ignore[arg-type,return-value]


# --- the fluent form ---------------------------------------------------------------------------------------


def test_the_fluent_form_offers_the_same_checks() -> None:
    opened = given(BankAccount, OPENED)
    assert isinstance(opened, Scenario)
    state = opened.when(deposit("10.00")).then(DEPOSITED)
    assert state.balance == Decimal("10.00")
    opened.when(deposit("10.00"), withdraw("60.00")).then(
        DEPOSITED, MoneyWithdrawn(ACCOUNT, Decimal("60.00"), Decimal("-50.00"), AT)
    )
    opened.when(withdraw("50.01")).raises(InsufficientFunds, match="asked 50.01")
    opened.when(deposit("5.00")).when(deposit("5.00")).state(lambda account: account.balance == Decimal("10"))
    opened.state(BankAccount(ACCOUNT, overdraft_limit=Decimal("50.00")))  # `when` adds to a copy


def test_the_fluent_form_fails_as_the_functions_do() -> None:
    with pytest.raises(AssertionError, match=r"\[0\] differs   MoneyDeposited.amount"):
        given(BankAccount, OPENED).when(deposit("1.00")).then(DEPOSITED)
    with pytest.raises(AssertionError, match="expected AccountClosedError, but BankAccount raised nothing"):
        given(BankAccount, OPENED).when(deposit("1.00")).raises(AccountClosedError)
    with pytest.raises(AssertionError, match="state predicate"):
        given(BankAccount).state(lambda account: account.account_id is not None)


# --- the pytest plugin's fixture ---------------------------------------------------------------------------


def test_the_fixture_offers_the_module(aggregate_test: ModuleType) -> None:
    assert aggregate_test is tidings.testing


def test_a_users_module_uses_the_fixture_without_services(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Services that cannot be reached: a fixture that touched one would error the test.
    monkeypatch.setenv("DATABASE_URL", f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("TIDINGS_SERVICE_WAIT", "1")
    pytester.makepyfile(
        test_counter="""
        from dataclasses import dataclass, replace

        import pytest


        @dataclass(frozen=True)
        class Add:
            n: int


        @dataclass(frozen=True)
        class Added:
            n: int
            total: int


        class TooBig(Exception):
            pass


        @dataclass(frozen=True)
        class Counter:
            total: int = 0

            def execute(self, command):
                if self.total + command.n > 10:
                    raise TooBig(f"{self.total} + {command.n}")
                return Added(command.n, self.total + command.n)

            def apply(self, event):
                return replace(self, total=event.total)


        def test_events(aggregate_test):
            aggregate_test.assert_events(Counter, given=[Added(3, 3)], when=Add(4), then=[Added(4, 7)])


        def test_error_and_state(aggregate_test):
            aggregate_test.given(Counter, Added(9, 9)).when(Add(2)).raises(TooBig, match="9 [+] 2")
            aggregate_test.assert_state(Counter, when=[Add(1), Add(2)], then=Counter(3))


        def test_a_failure_reads_well(aggregate_test):
            with pytest.raises(AssertionError, match="Added.total: expected 8, produced 7"):
                aggregate_test.assert_events(Counter, given=[Added(3, 3)], when=Add(4), then=[Added(4, 8)])
        """
    )
    result = pytester.runpytest_subprocess("--fail-on-skip", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.OK
