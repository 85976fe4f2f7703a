"""A session killed with -9 leaves its services running; the next provisioning stops them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tidings.devservices.runs import RunOwner, pid_alive, sweep_stale_runs

HOLD_SERVICES = """
import json, sys, time
from tidings import devservices
with devservices.services() as running:
    print(json.dumps({"postgres": running.postgres.address, "kafka": running.kafka.address}), flush=True)
    time.sleep(600)  # held until the test kills this process
"""


def _wait_dead(pid: int, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not pid_alive(pid)


def test_services_of_a_killed_session_are_swept(
    local_env: dict[str, str], runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_env["TIDINGS_KAFKA_HEAP"] = "384m"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_SERVICES],
        env=local_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    line = holder.stdout.readline()  # blocks until both services are ready (or the holder dies)
    assert line, holder.stderr.read() if holder.stderr else "holder died"
    json.loads(line)

    owners = {path.name.split("-")[0]: RunOwner.read(path) for path in runs_dir.iterdir()}
    assert set(owners) == {"postgres", "kafka"}
    service_pids = {kind: owner.service_pid for kind, owner in owners.items() if owner}
    assert all(pid_alive(pid) for pid in service_pids.values())

    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    # Nobody stopped them: they are orphans now.
    assert all(pid_alive(pid) for pid in service_pids.values())

    monkeypatch.setenv("TIDINGS_RUN_DIR", str(runs_dir))
    sweep_stale_runs()

    for kind, pid in service_pids.items():
        assert _wait_dead(pid), f"{kind} (pid {pid}) still runs after the sweep"
    for owner in owners.values():
        assert owner is not None
        assert not Path(owner.data_dir).exists()
    # The logs stay for diagnosis.
    assert any(runs_dir.glob("kafka-*/kafka.log"))
    assert any(runs_dir.glob("postgres-*/postgres.log"))


def test_sweep_kills_only_what_it_started(runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_RUN_DIR", str(runs_dir))
    # A recorded pid that now belongs to an unrelated process (pid reuse) must survive a dead owner.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead_owner = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_owner.wait()
    try:
        for name, owner_pid in (("live-owner", os.getpid()), ("detached", 0), ("dead-owner", dead_owner.pid)):
            run_dir = runs_dir / name
            (run_dir / "data").mkdir(parents=True)
            RunOwner("kafka", owner_pid, sleeper.pid, str(run_dir / "data")).write(run_dir)
        sweep_stale_runs()
        assert pid_alive(sleeper.pid)
        assert (runs_dir / "live-owner" / "data").exists()
        assert (runs_dir / "detached" / "data").exists()
        assert not (runs_dir / "dead-owner" / "data").exists()  # its data goes, the unrelated process stays
    finally:
        sleeper.kill()
        sleeper.wait()
