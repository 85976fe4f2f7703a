from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SERVICE_VARIABLES = ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "TIDINGS_SERVICES")


@pytest.fixture
def runs_dir() -> Iterator[Path]:
    """A runs root of the test's own. Not under tmp_path: pytest makes that mode 700, and as root the
    postgres account must be able to traverse to its data directory."""
    path = Path(tempfile.mkdtemp(prefix="tidings-test-runs-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def local_env(runs_dir: Path) -> dict[str, str]:
    """An environment that forces the local route, with run directories of the test's own."""
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    env["TIDINGS_SERVICES"] = "local"
    env["TIDINGS_RUN_DIR"] = str(runs_dir)
    return env


@pytest.fixture
def path_with(tmp_path: Path) -> Callable[..., str]:
    """A PATH holding only the named programs (symlinked from the real PATH) plus Python's own bin dir."""

    def make(*programs: str) -> str:
        bindir = tmp_path / "bin"
        bindir.mkdir(exist_ok=True)
        for program in programs:
            found = shutil.which(program)
            assert found, f"{program} is needed on this machine to build the test's PATH"
            (bindir / program).symlink_to(found)
        return f"{bindir}{os.pathsep}{Path(sys.executable).parent}"

    return make
