"""A single-node Apache Kafka 4.x broker (KRaft) run from its Maven Central jars with plain ``java``.

Used when neither ``KAFKA_BOOTSTRAP_SERVERS`` nor a Docker engine is available. Each broker gets its own
run directory (config, data, log) and two free loopback ports (client and controller). It counts as ready
only when its log says ``Kafka Server started``, the JVM is alive and an admin metadata request answers:
a listening port alone does not mean the controller has elected itself.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from confluent_kafka.admin import AdminClient

from tidings.devservices.errors import MissingPrerequisite, ServiceStartFailed
from tidings.devservices.jars import kafka_jars
from tidings.devservices.runs import RunOwner, free_port, new_run_dir, service_alive, tail

__all__ = ["LocalKafka", "check_java", "wait_for_kafka"]

START_ATTEMPTS = 3
START_TIMEOUT_SECONDS = 120
STOP_TIMEOUT_SECONDS = 30
READY_LINE = "Kafka Server started"
MIN_JAVA = 17

REMEDY_JAVA = (
    "The local Kafka broker runs on Java 17 or newer. Install it (Debian/Ubuntu: apt-get install "
    "openjdk-17-jre-headless), or set KAFKA_BOOTSTRAP_SERVERS to a running broker."
)


@functools.cache
def check_java() -> str:
    """The path of a ``java`` of version 17 or newer (checked once per process: it starts a JVM).

    Raises:
        MissingPrerequisite: no ``java`` on PATH, or one that is too old.
    """
    java = shutil.which("java")
    if java is None:
        raise MissingPrerequisite("java", REMEDY_JAVA)
    result = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        raise MissingPrerequisite("java", f"{java} -version did not report a version. {REMEDY_JAVA}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise MissingPrerequisite(f"java >= {MIN_JAVA} (found {major} at {java})", REMEDY_JAVA)
    return java


def wait_for_kafka(bootstrap_servers: str, timeout: float) -> None:
    """Block until a metadata request to the cluster answers with at least one broker.

    Raises:
        TimeoutError: no answer within ``timeout`` seconds.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            metadata = admin.list_topics(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
            if metadata.brokers:
                return
        except Exception as exc:  # noqa: BLE001 - librdkafka raises KafkaException for every failure
            last_error = exc
        time.sleep(0.2)
    raise TimeoutError(f"Kafka at {bootstrap_servers} did not answer a metadata request: {last_error}")


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass
class LocalKafka:
    """One single-node KRaft broker.

    Example::

        kafka = LocalKafka()
        bootstrap = kafka.start()     # 127.0.0.1:<port>
        ...
        kafka.stop()

    The heap is bounded (``TIDINGS_KAFKA_HEAP``, default 768m) because the JVM would otherwise take a
    quarter of the machine's memory. ``detached`` brokers (``tidings dev up``) outlive their starter.
    """

    detached: bool = False
    java: str = field(default_factory=check_java)
    run_dir: Path = field(default_factory=lambda: new_run_dir("kafka"))
    heap: str = field(default_factory=lambda: os.environ.get("TIDINGS_KAFKA_HEAP", "768m"))
    port: int = 0
    controller_port: int = 0
    pid: int = 0

    @property
    def log_path(self) -> Path:
        return self.run_dir / "kafka.log"

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __post_init__(self) -> None:
        _megabytes(self.heap)  # reject a malformed size before anything is launched

    def start(self) -> str:
        """Fetch the jars if needed, format the storage, start the broker; return the bootstrap address.

        Raises:
            MissingPrerequisite: java (or, for the first fetch, mvn) is missing.
            ServiceStartFailed: the broker exited or did not become ready; the message has its log's tail.
        """
        lib = kafka_jars()
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port, self.controller_port = free_port(), free_port()
            config = self._write_config()
            self._format(lib, config)
            process = self._launch(lib, config)
            self.pid = process.pid
            RunOwner("kafka", 0 if self.detached else os.getpid(), self.pid, str(self.data_dir)).write(
                self.run_dir
            )
            try:
                self._wait_ready(process)
                return self.bootstrap_servers
            except ServiceStartFailed:
                self._kill()
                if "Address already in use" not in tail(self.log_path, 200) or attempt == START_ATTEMPTS:
                    raise
                shutil.rmtree(self.data_dir, ignore_errors=True)
        raise AssertionError("unreachable")  # the loop returns or raises

    def stop(self, *, keep_logs: bool = True) -> None:
        """SIGTERM the broker, wait for a clean shutdown (SIGKILL after 30 s), delete its data."""
        self.pause()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if not keep_logs:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def pause(self) -> None:
        """Stop the broker (SIGTERM, SIGKILL after 30 s) but keep its data and ports.

        For tests of what clients do while Kafka is down; ``resume()`` brings the same broker back.
        """
        if self.is_running():
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
            while self.is_running() and time.monotonic() < deadline:
                _reap(self.pid)
                time.sleep(0.1)
            self._kill()
        _reap(self.pid)

    def resume(self) -> str:
        """Start a paused broker again, with its data, on its old ports; return the bootstrap address.

        Raises:
            ServiceStartFailed: the broker exited or did not become ready (its old port taken, say).
        """
        config = self.run_dir / "server.properties"
        if self.is_running() or not config.exists():
            raise RuntimeError("resume() is for a broker that was started, then paused")
        # The readiness check looks for the broker's "started" line: keep the earlier run's log aside.
        self.log_path.replace(self.log_path.with_suffix(".log.previous"))
        process = self._launch(kafka_jars(), config)
        self.pid = process.pid
        RunOwner("kafka", 0 if self.detached else os.getpid(), self.pid, str(self.data_dir)).write(
            self.run_dir
        )
        self._wait_ready(process)
        return self.bootstrap_servers

    def is_running(self) -> bool:
        return bool(self.pid) and service_alive(self.pid, self.run_dir)

    # --- steps -------------------------------------------------------------------------------------

    def _write_config(self) -> Path:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "auto.create.topics.enable": "false",
            "delete.topic.enable": "true",
        }
        config = self.run_dir / "server.properties"
        config.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        log4j = self.run_dir / "log4j2.properties"
        log4j.write_bytes(resources.files("tidings.devservices").joinpath("log4j2.properties").read_bytes())
        return config

    def _jvm(self, lib: Path, heap: str) -> list[str]:
        return [
            self.java,
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.run_dir / 'log4j2.properties'}",
            "-cp",
            f"{lib}/*",
        ]

    def _format(self, lib: Path, config: Path) -> None:
        command = [
            *self._jvm(lib, "256m"),
            "kafka.tools.StorageTool",
            "format",
            # One argument, "--cluster-id=...": a base64 id may start with "-" and pass for an option.
            f"--cluster-id={_cluster_id()}",
            "-c",
            str(config),
            "--ignore-formatted",
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            self.log_path.write_text(result.stdout + result.stderr)
            raise ServiceStartFailed(
                "kafka", "formatting the KRaft storage failed", self.log_path, tail(self.log_path)
            )

    def _launch(self, lib: Path, config: Path) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                [
                    *self._jvm(lib, self.heap),
                    f"-Xms{min(256, _megabytes(self.heap))}m",
                    "kafka.Kafka",
                    str(config),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Detached brokers must survive the CLI that started them; attached ones are swept by
                # the next provisioning if their owner dies without stopping them.
                start_new_session=self.detached,
            )

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while READY_LINE not in self.log_path.read_text(errors="replace"):
            if process.poll() is not None:
                raise ServiceStartFailed(
                    "kafka",
                    f"the broker exited with code {process.returncode}",
                    self.log_path,
                    tail(self.log_path),
                )
            if time.monotonic() > deadline:
                raise ServiceStartFailed(
                    "kafka",
                    f"no '{READY_LINE}' within {START_TIMEOUT_SECONDS}s",
                    self.log_path,
                    tail(self.log_path),
                )
            time.sleep(0.2)
        try:
            wait_for_kafka(self.bootstrap_servers, max(10.0, deadline - time.monotonic()))
        except TimeoutError as exc:
            raise ServiceStartFailed("kafka", str(exc), self.log_path, tail(self.log_path)) from exc

    def _kill(self) -> None:
        if self.is_running():
            os.kill(self.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while self.is_running() and time.monotonic() < deadline:
                _reap(self.pid)
                time.sleep(0.05)


def _reap(pid: int) -> None:
    """Collect our own child's exit status so that it does not linger as a zombie."""
    if pid:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def _megabytes(heap: str) -> int:
    match = re.fullmatch(r"(\d+)([mMgG])", heap)
    if match is None:
        raise ValueError(f"TIDINGS_KAFKA_HEAP={heap!r}: expected a JVM size such as 768m or 1g")
    number = int(match.group(1))
    return number * 1024 if match.group(2) in "gG" else number
