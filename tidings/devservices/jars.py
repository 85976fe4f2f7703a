"""The Apache Kafka broker's jars, fetched once from Maven Central and cached outside the repository.

Maven resolves ``org.apache.kafka:kafka_2.13`` and a log4j2 backend (``kafka-pom.xml`` beside this
module) into ``<cache>/kafka/<version>/lib``. Concurrent sessions serialise on a file lock, and a fetch
writes to a temporary directory that is renamed into place only when complete, so a killed download
never leaves a half-filled cache behind.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from tidings.devservices.errors import MissingPrerequisite, ServiceStartFailed
from tidings.devservices.runs import cache_root

__all__ = ["DEFAULT_KAFKA_VERSION", "jars_cached", "kafka_jars", "kafka_version", "require_mvn"]

DEFAULT_KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
FETCH_TIMEOUT_SECONDS = 900


def kafka_version() -> str:
    """The broker version to run: ``$TIDINGS_KAFKA_VERSION`` or the tested default."""
    return os.environ.get("TIDINGS_KAFKA_VERSION", DEFAULT_KAFKA_VERSION)


def _home(version: str) -> Path:
    return cache_root() / "kafka" / version


def jars_cached(version: str | None = None) -> bool:
    """Whether the jars of ``version`` are already in the cache (so that Maven is not needed)."""
    return (_home(version or kafka_version()) / ".complete").exists()


def require_mvn() -> str:
    """The path of ``mvn``.

    Raises:
        MissingPrerequisite: Maven is not installed.
    """
    mvn = shutil.which("mvn")
    if mvn is None:
        raise MissingPrerequisite(
            "mvn (Apache Maven)",
            "It fetches the Kafka broker's jars from Maven Central once. Install it (Debian/Ubuntu: "
            "apt-get install maven), or set KAFKA_BOOTSTRAP_SERVERS to a running broker.",
        )
    return mvn


def kafka_jars(version: str | None = None) -> Path:
    """The directory of the broker's jars, fetching them first if the cache lacks them.

    Raises:
        MissingPrerequisite: ``mvn`` is needed for the first fetch and is not installed.
        ServiceStartFailed: Maven could not resolve the artifacts (the message has its output).
    """
    version = version or kafka_version()
    home = _home(version)
    lib = home / "lib"
    if (home / ".complete").exists():
        return lib
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (home / ".complete").exists():
            _fetch(version, home, lib)
    return lib


def _fetch(version: str, home: Path, lib: Path) -> None:
    mvn = require_mvn()
    staging = Path(tempfile.mkdtemp(prefix="lib-", dir=home))
    pom = staging / "pom.xml"
    pom.write_bytes(resources.files("tidings.devservices").joinpath("kafka-pom.xml").read_bytes())
    command = [
        mvn,
        "-B",
        "-ntp",
        "-q",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-Dkafka.version={version}",
        f"-Dlog4j.version={LOG4J_VERSION}",
        f"-Djars.dir={staging / 'lib'}",
    ]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=FETCH_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ServiceStartFailed(
            "kafka", f"fetching the Kafka {version} jars took over {FETCH_TIMEOUT_SECONDS}s"
        ) from exc
    if result.returncode != 0 or not any((staging / "lib").glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        output = (result.stdout + result.stderr)[-3000:]
        raise ServiceStartFailed(
            "kafka", f"Maven could not fetch org.apache.kafka:kafka_2.13:{version}:\n{output}"
        )
    shutil.rmtree(lib, ignore_errors=True)
    (staging / "lib").rename(lib)
    shutil.rmtree(staging, ignore_errors=True)
    (home / ".complete").touch()
