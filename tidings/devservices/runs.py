"""Where provisioned services keep their data and logs, and how stale ones are found and removed.

Every started service gets a run directory of its own (``<runs root>/<kind>-<random>``), so two test
sessions on one machine never share a data directory. A run directory records who owns it in
``owner.json``; a later provisioning sweeps the directories whose owner died (a test run killed with -9,
say), stopping what still runs there and deleting its data. Logs are kept for diagnosis until the run
directory ages out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "RunOwner",
    "cache_root",
    "free_port",
    "new_run_dir",
    "pid_alive",
    "runs_root",
    "service_alive",
    "sweep_stale_runs",
    "tail",
]

OWNER_FILE = "owner.json"
KEEP_LOGS_SECONDS = 2 * 24 * 3600


def cache_root() -> Path:
    """Downloads that outlive runs (Kafka jars): ``$TIDINGS_CACHE_DIR``, else the user's cache dir."""
    explicit = os.environ.get("TIDINGS_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tidings"


def runs_root() -> Path:
    """Run directories: ``$TIDINGS_RUN_DIR``, else one per user under the system temp dir.

    Not under the home directory: when we run as root, PostgreSQL runs as the ``postgres`` account and
    must be able to reach its data directory, which a mode-700 ``/root`` forbids.
    """
    explicit = os.environ.get("TIDINGS_RUN_DIR")
    root = Path(explicit) if explicit else Path(tempfile.gettempdir()) / f"tidings-{os.getuid()}"
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o711)
    return root


def new_run_dir(kind: str) -> Path:
    """A fresh, uniquely named run directory for one service instance."""
    return Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=runs_root()))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Another process may take it before the service binds it; the service starters detect that from the
    log and retry with another port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tail(path: Path | None, lines: int = 30) -> str:
    """The last lines of a log, or an empty string when there is none yet."""
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


@dataclass(frozen=True, slots=True)
class RunOwner:
    """What a run directory records about the process that owns it and the service it holds.

    ``owner_pid`` 0 marks a detached instance (``tidings dev up``): the sweep leaves it alone.
    """

    kind: str
    owner_pid: int
    service_pid: int = 0
    data_dir: str = ""

    def write(self, run_dir: Path) -> None:
        (run_dir / OWNER_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, run_dir: Path) -> RunOwner | None:
        try:
            return cls(**json.loads((run_dir / OWNER_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None


def _stale_dirs(root: Path) -> Iterator[tuple[Path, RunOwner | None]]:
    for run_dir in root.iterdir():
        if not run_dir.is_dir():
            continue
        owner = RunOwner.read(run_dir)
        if owner is None or (owner.owner_pid and not pid_alive(owner.owner_pid)):
            yield run_dir, owner


def service_alive(pid: int, run_dir: Path) -> bool:
    """Whether ``pid`` is still the service of ``run_dir``: alive, and its command line names the directory.

    Guards against pid reuse (a recorded pid may belong to an unrelated process by now) and treats a
    zombie, whose command line is empty, as dead. Without /proc, liveness alone has to do.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return pid_alive(pid)
    try:
        return str(run_dir) in (proc / str(pid) / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def sweep_stale_runs() -> None:
    """Stop services whose owner died, drop their data, and delete old run directories.

    Best effort: a failure here must never stop a new service from starting.
    """
    root = runs_root()
    now = time.time()
    for run_dir, owner in _stale_dirs(root):
        with contextlib.suppress(OSError):
            if owner and owner.service_pid and service_alive(owner.service_pid, run_dir):
                os.kill(owner.service_pid, signal.SIGKILL)
            if owner and owner.data_dir:
                shutil.rmtree(owner.data_dir, ignore_errors=True)
            if now - run_dir.stat().st_mtime > KEEP_LOGS_SECONDS:
                shutil.rmtree(run_dir, ignore_errors=True)
