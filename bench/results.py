"""Result rows in the shape DESIGN.md fixes: bench/results/<benchmark>.json, and a table of them."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"


def _git_sha() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown"


@dataclass(frozen=True, slots=True)
class Row:
    """One case and metric. ``ratio`` is oriented so that higher is better for tidings."""

    benchmark: str
    case: str
    metric: str
    unit: str
    tidings: float
    reference_name: str
    reference: float
    ratio: float
    params: dict[str, Any] = field(default_factory=dict)
    git_sha: str = field(default_factory=_git_sha)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def write(benchmark: str, rows: list[Row]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{benchmark}.json"
    path.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    return path


def show(rows: list[Row]) -> None:
    table = Table(title=rows[0].benchmark if rows else "no rows")
    for column in ("case", "metric", "tidings", "reference", "ratio (higher is better)"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            escape(row.case),
            f"{row.metric} ({row.unit})",
            f"{row.tidings:.2f}",
            escape(f"{row.reference:.2f} [{row.reference_name}]"),
            f"{row.ratio:.2f}",
        )
    Console(width=120).print(table)
