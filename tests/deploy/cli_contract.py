"""What a deployment file may ask of the ``tidings`` CLI: the commands it runs and the variables it sets.

Shared by the checks of the Helm chart and of docker-compose.yml, so both hold their files to the CLI
as it is, not to a copy of its options.
"""

from __future__ import annotations

import subprocess
from typing import Any

from typer.main import get_command

from tests.support import tidings_script
from workers.cli import app as cli_app

__all__ = ["run_tidings", "variables_read_by"]


def run_tidings(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``tidings`` with ``args`` (``..., "--help"`` checks a command line: click refuses
    an unknown command or option before it honours --help)."""
    return subprocess.run([tidings_script(), *args], capture_output=True, text=True, timeout=60, check=False)


def variables_read_by(args: list[str]) -> set[str]:
    """The environment variables the options of the tidings command ``args`` names read."""
    command: Any = get_command(cli_app)
    for word in args:
        sub = getattr(command, "commands", {}).get(word)
        if sub is None:
            break
        command = sub
    names: set[str] = set()
    for param in command.params:
        envvar = getattr(param, "envvar", None)
        names.update([envvar] if isinstance(envvar, str) else envvar or [])
    return names
