"""Start-up of the local services: tidings' provisioner against the bare commands it wraps.

The reference starts the same binaries with the same settings and stops timing at the first moment the
service could be used (PostgreSQL: a connection succeeds; Kafka: the broker logs that it started). tidings
also creates the database, checks prerequisites, records ownership and, for Kafka, waits for an admin
metadata answer. The ratio (reference / tidings) says what that care costs: 1.0 means nothing.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from importlib import resources
from pathlib import Path

import psycopg

from bench.results import Row
from tidings import devservices
from tidings.devservices.jars import kafka_jars
from tidings.devservices.runs import free_port, new_run_dir

NAME = "services"


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def raw_postgres_seconds() -> float:
    bindir = devservices.find_postgres_bindir()
    run_dir = new_run_dir("bench-pg")
    data, port = run_dir / "data", free_port()
    if os.geteuid() == 0:
        shutil.chown(run_dir, "postgres", "postgres")
    started = time.perf_counter()
    subprocess.run(
        _as_postgres(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    subprocess.run(
        _as_postgres(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(run_dir / "log"),
                "-w",
                "-o",
                f"-p {port} -k {run_dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    while True:
        try:
            psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres").close()
            break
        except psycopg.OperationalError:
            time.sleep(0.01)
    elapsed = time.perf_counter() - started
    subprocess.run(
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
        check=False,
        capture_output=True,
    )
    shutil.rmtree(run_dir, ignore_errors=True)
    return elapsed


def tidings_seconds(service: devservices.LocalPostgres | devservices.LocalKafka) -> float:
    started = time.perf_counter()
    service.start()
    elapsed = time.perf_counter() - started
    service.stop(keep_logs=False)
    return elapsed


def raw_kafka_seconds() -> float:
    lib = kafka_jars()
    run_dir: Path = new_run_dir("bench-kafka")
    port, controller = free_port(), free_port()
    config = run_dir / "server.properties"
    config.write_text(
        "process.roles=broker,controller\nnode.id=1\n"
        f"controller.quorum.voters=1@127.0.0.1:{controller}\n"
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n"
        "controller.listener.names=CONTROLLER\n"
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n"
        f"log.dirs={run_dir / 'data'}\noffsets.topic.replication.factor=1\n"
        "transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n"
    )
    log4j = run_dir / "log4j2.properties"
    log4j.write_bytes(resources.files("tidings.devservices").joinpath("log4j2.properties").read_bytes())
    jvm = ["java", "-Xmx768m", f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{lib}/*"]
    log = run_dir / "out.log"
    started = time.perf_counter()
    subprocess.run(
        [*jvm, "kafka.tools.StorageTool", "format", "-t", "MkU3OEVBNTcwNTJENDM2Qg", "-c", str(config)],
        check=True,
        capture_output=True,
    )
    with open(log, "wb") as out:
        process = subprocess.Popen([*jvm, "kafka.Kafka", str(config)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while "Kafka Server started" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"reference broker exited: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    process.kill()
    process.wait()
    shutil.rmtree(run_dir, ignore_errors=True)
    return elapsed


def run(repeat: int = 3) -> list[Row]:
    kafka_jars()  # fetched once, outside the timings
    rows = []
    for case, tidings_run, reference_run, reference_name in (
        (
            "postgres",
            lambda: tidings_seconds(devservices.LocalPostgres()),
            raw_postgres_seconds,
            "initdb + pg_ctl start",
        ),
        (
            "kafka",
            lambda: tidings_seconds(devservices.LocalKafka()),
            raw_kafka_seconds,
            "StorageTool format + kafka.Kafka",
        ),
    ):
        # Interleaved so that a noisy neighbour hurts both sides alike.
        ours, theirs = [], []
        for _ in range(repeat):
            ours.append(tidings_run())
            theirs.append(reference_run())
        tidings_median, reference_median = statistics.median(ours), statistics.median(theirs)
        rows.append(
            Row(
                NAME,
                case,
                "startup median",
                "s",
                tidings_median,
                reference_name,
                reference_median,
                reference_median / tidings_median,
                {"repeat": repeat, "tidings_runs": ours, "reference_runs": theirs},
            )
        )
    return rows
