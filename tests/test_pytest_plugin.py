"""The pytest plugin as users meet it: entry point, --fail-on-skip, fixtures that fail rather than skip."""

from __future__ import annotations

import pytest


def test_plugin_is_registered_through_its_entry_point(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("tidings")


def test_a_skipped_test_fails_the_session_with_fail_on_skip(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_runs():
            assert True

        def test_needs_a_service():
            pytest.skip("no broker")
        """
    )
    plain = pytester.runpytest_subprocess()
    assert plain.ret == pytest.ExitCode.OK
    strict = pytester.runpytest_subprocess("--fail-on-skip")
    assert strict.ret == pytest.ExitCode.TESTS_FAILED
    strict.stdout.fnmatch_lines(["*--fail-on-skip: 1 skipped, which fails this run*test_needs_a_service*"])


def test_a_module_skipped_at_collection_fails_the_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_optional="""
        import pytest
        pytest.importorskip("a_module_that_does_not_exist")

        def test_never_collected():
            pass
        """,
        test_present="def test_runs():\n    assert True\n",
    )
    assert pytester.runpytest_subprocess().ret == pytest.ExitCode.OK
    assert pytester.runpytest_subprocess("--fail-on-skip").ret == pytest.ExitCode.TESTS_FAILED


def test_xfail_is_not_counted_as_a_skip(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.xfail(reason="known", strict=True)
        def test_known_bug():
            assert False
        """
    )
    assert pytester.runpytest_subprocess("--fail-on-skip").ret == pytest.ExitCode.OK


def test_no_tests_collected_is_not_success(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def helper():\n    return 1\n")
    assert pytester.runpytest_subprocess("--fail-on-skip").ret == pytest.ExitCode.NO_TESTS_COLLECTED


def test_a_service_that_cannot_be_provided_errors_the_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tidings.devservices.runs import free_port

    monkeypatch.setenv("DATABASE_URL", f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    monkeypatch.setenv("TIDINGS_SERVICE_WAIT", "1")
    pytester.makepyfile(
        """
        def test_uses_postgres(postgres_schema):
            pass
        """
    )
    result = pytester.runpytest_subprocess("--fail-on-skip")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ServiceStartFailed*DATABASE_URL=*does not answer*"])
