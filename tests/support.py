"""Helpers shared by tidings' own tests."""

from __future__ import annotations

import sys
from pathlib import Path


def tidings_script() -> str:
    """The installed console script, so that tests exercise the real entry point."""
    script = Path(sys.executable).parent / "tidings"
    assert script.exists(), f"console script missing beside {sys.executable}: install tidings first"
    return str(script)
