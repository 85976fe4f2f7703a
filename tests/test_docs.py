"""Every ``python`` block in docs/ runs; every ``python test`` block passes as a test module.

Both run against the session's services, passed through the environment as a user would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tidings import devservices

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```(python(?: test)?)\n(.*?)^```", re.S | re.M)


def _blocks(kind: str) -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for number, match in enumerate(BLOCK.finditer(page.read_text())):
            if match.group(1) == kind:
                found.append((f"{page.relative_to(DOCS)}#{number}", match.group(2)))
    return found


def _env(postgres: devservices.Service, kafka: devservices.Service) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": postgres.address, "KAFKA_BOOTSTRAP_SERVERS": kafka.address}


def test_docs_have_runnable_examples() -> None:
    assert _blocks("python")
    assert _blocks("python test")


@pytest.mark.parametrize(("where", "code"), _blocks("python"), ids=[w for w, _ in _blocks("python")])
def test_python_blocks_run(
    where: str, code: str, postgres_service: devservices.Service, kafka_service: devservices.Service
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(postgres_service, kafka_service),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{where}:\n{result.stderr}"


@pytest.mark.parametrize(
    ("where", "code"), _blocks("python test"), ids=[w for w, _ in _blocks("python test")]
)
def test_python_test_blocks_pass(
    where: str,
    code: str,
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    postgres_service: devservices.Service,
    kafka_service: devservices.Service,
) -> None:
    for name, value in _env(postgres_service, kafka_service).items():
        monkeypatch.setenv(name, value)
    pytester.makepyfile(test_from_docs=code)
    result = pytester.runpytest_subprocess("--fail-on-skip", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK, f"{where}:\n{result.stdout.str()}"
    assert result.parseoutcomes().get("passed", 0) >= 1
