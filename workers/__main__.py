"""``python -m workers`` is the ``tidings`` command (what ``tidings demo`` starts its processes with, so
that they run the same interpreter and installation whatever PATH says)."""

from workers.cli import app

app(prog_name="tidings")
