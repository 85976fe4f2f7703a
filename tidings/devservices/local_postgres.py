"""A throwaway PostgreSQL cluster run from the machine's server binaries.

Used when neither ``DATABASE_URL`` nor a Docker engine is available. The cluster lives in its own run
directory, listens on 127.0.0.1 on a free port with a private unix socket directory, trusts local
connections (it holds nothing but test data) and is tuned for throughput over durability: it is deleted
when it stops.

initdb refuses to run as root, so as root every server binary runs as the ``postgres`` account.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from tidings.devservices.errors import MissingPrerequisite, ServiceStartFailed
from tidings.devservices.runs import RunOwner, free_port, new_run_dir, pid_alive, tail

__all__ = ["LocalPostgres", "check_postgres_prerequisites", "find_postgres_bindir"]

DATABASE = "tidings"
START_ATTEMPTS = 3
START_TIMEOUT_SECONDS = 60

# Durability is pointless for a cluster that is deleted on stop; these make tests and benchmarks
# measure tidings rather than the disk. Benchmarks that need durable settings use DATABASE_URL.
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "128MB",
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] ",
}

REMEDY_BINARIES = (
    "Install the PostgreSQL server (Debian/Ubuntu: apt-get install postgresql), or set "
    "TIDINGS_PG_BINDIR to the directory holding initdb and pg_ctl, or set DATABASE_URL to a running server."
)


def find_postgres_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Looks at ``$TIDINGS_PG_BINDIR``, then ``initdb`` on PATH, then Debian's ``/usr/lib/postgresql/*/bin``
    (newest major first).

    Raises:
        MissingPrerequisite: no usable installation was found.
    """
    explicit = os.environ.get("TIDINGS_PG_BINDIR")
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    else:
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(Path(on_path).resolve().parent)
        debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major_of, reverse=True)
        candidates.extend(Path(p) for p in debian)
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    where = f" in TIDINGS_PG_BINDIR={explicit}" if explicit else ""
    raise MissingPrerequisite(
        f"PostgreSQL server binaries (initdb, pg_ctl, postgres){where}", REMEDY_BINARIES
    )


def check_postgres_prerequisites() -> Path:
    """The server binaries' directory, after checking that this user can run them.

    Raises:
        MissingPrerequisite: no binaries, or running as root without a postgres account or runuser.
    """
    bindir = find_postgres_bindir()
    if os.geteuid() == 0:
        _postgres_account()
        _runuser()
    return bindir


def _runuser() -> str:
    runuser = shutil.which("runuser")
    if runuser is None:
        raise MissingPrerequisite(
            "runuser",
            "As root, PostgreSQL must run as the postgres account through runuser; install util-linux, "
            "run as an ordinary user, or set DATABASE_URL.",
        )
    return runuser


def _major_of(path: str) -> int:
    try:
        return int(Path(path).parent.name)
    except ValueError:
        return 0


@dataclass
class LocalPostgres:
    """One throwaway PostgreSQL cluster.

    Example::

        pg = LocalPostgres()
        url = pg.start()          # postgresql://postgres@127.0.0.1:<port>/tidings
        ...
        pg.stop()

    ``detached`` clusters (``tidings dev up``) outlive the process that started them.
    """

    detached: bool = False
    bindir: Path = field(default_factory=find_postgres_bindir)
    run_dir: Path = field(default_factory=lambda: new_run_dir("postgres"))
    port: int = 0

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.run_dir / "socket"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def start(self) -> str:
        """Initialise and start the cluster, create the ``tidings`` database, return its URL.

        Raises:
            MissingPrerequisite: running as root without a ``postgres`` account to run as.
            ServiceStartFailed: initdb or the server failed; the message carries the log's tail.
        """
        self._prepare_dirs()
        self._initdb()
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = free_port()
            self._record_owner(service_pid=0)
            if self._pg_ctl_start():
                break
            # Another process took the port between free_port() and bind: try another.
            if "could not bind" not in tail(self.log_path, 50) or attempt == START_ATTEMPTS:
                raise ServiceStartFailed(
                    "postgres", "pg_ctl start failed", self.log_path, tail(self.log_path)
                )
        self._record_owner(service_pid=self._postmaster_pid())
        self._create_database()
        return self.url

    def stop(self, *, keep_logs: bool = True) -> None:
        """Stop the server (fast shutdown) and delete the data directory; the log stays for diagnosis."""
        self.pause()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        if not keep_logs:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def pause(self) -> None:
        """Stop the server (fast shutdown: sessions are cut) but keep its data and port.

        For tests of what clients do while PostgreSQL is down; ``resume()`` brings the same cluster back.
        """
        if (self.data_dir / "postmaster.pid").exists():
            command = [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-m",
                "fast",
                "-w",
                "-t",
                "30",
                "stop",
            ]
            subprocess.run(self._as_owner(command), capture_output=True, check=False)

    def resume(self) -> str:
        """Start a paused cluster again, with its data, on its old port; return its URL.

        Raises:
            ServiceStartFailed: the server did not start (its old port taken, say).
        """
        if self.is_running() or not (self.data_dir / "PG_VERSION").exists():
            raise RuntimeError("resume() is for a cluster that was started, then paused")
        if not self._pg_ctl_start():
            raise ServiceStartFailed("postgres", "pg_ctl start failed", self.log_path, tail(self.log_path))
        self._record_owner(service_pid=self._postmaster_pid())
        return self.url

    def is_running(self) -> bool:
        pid = self._postmaster_pid()
        return pid > 0 and pid_alive(pid)

    # --- steps -------------------------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.touch()
        if os.geteuid() == 0:
            uid, gid = _postgres_account()
            for path in (self.run_dir, self.socket_dir, self.log_path):
                os.chown(path, uid, gid)
            reachable = subprocess.run(self._as_owner(["test", "-w", str(self.run_dir)]), check=False)
            if reachable.returncode != 0:
                raise ServiceStartFailed(
                    "postgres",
                    f"the postgres account cannot reach {self.run_dir}: a parent directory is not "
                    "traversable by it. Set TIDINGS_RUN_DIR to a directory under one it can traverse "
                    "(the default, under the system temp dir, is).",
                )

    def _initdb(self) -> None:
        command = [
            str(self.bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ]
        result = subprocess.run(self._as_owner(command), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            self.log_path.write_text(result.stdout + result.stderr)
            raise ServiceStartFailed("postgres", "initdb failed", self.log_path, tail(self.log_path))

    def _pg_ctl_start(self) -> bool:
        settings = {**SERVER_SETTINGS, "unix_socket_directories": str(self.socket_dir)}
        # The last occurrence of a setting wins, so a retry on another port only appends.
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# tidings.devservices\n")
            conf.write("".join(f"{key} = '{value}'\n" for key, value in settings.items()))
            conf.write(f"port = {self.port}\n")
        command = [
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-w",
            "-t",
            str(START_TIMEOUT_SECONDS),
            "start",
        ]
        result = subprocess.run(self._as_owner(command), capture_output=True, text=True, check=False)
        return result.returncode == 0

    def _create_database(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        while True:
            try:
                with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise ServiceStartFailed(
                        "postgres",
                        f"server did not accept connections: {exc}",
                        self.log_path,
                        tail(self.log_path),
                    ) from exc
                time.sleep(0.2)

    def _postmaster_pid(self) -> int:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return 0

    def _record_owner(self, service_pid: int) -> None:
        owner_pid = 0 if self.detached else os.getpid()
        RunOwner("postgres", owner_pid, service_pid, str(self.data_dir)).write(self.run_dir)

    def _as_owner(self, command: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return command
        return [_runuser(), "-u", "postgres", "--", *command]


def _postgres_account() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise MissingPrerequisite(
            "the postgres system account",
            "initdb refuses to run as root. Create the account (apt-get install postgresql creates it), "
            "run as an ordinary user, or set DATABASE_URL.",
        ) from None
    return entry.pw_uid, entry.pw_gid
