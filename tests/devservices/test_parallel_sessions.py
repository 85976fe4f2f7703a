"""Two test sessions on one machine at once get their own services: distinct ports, data dirs and logs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

INNER_TEST = textwrap.dedent(
    """
    import json, os, time
    from pathlib import Path

    import psycopg
    from confluent_kafka import Consumer, Producer

    def test_session_uses_its_own_services(postgres_service, kafka_service, postgres_schema, kafka_namespace):
        me, other = Path(os.environ["INNER_ME"]), Path(os.environ["INNER_OTHER"])
        with psycopg.connect(postgres_schema.url) as conn:
            conn.execute("CREATE TABLE marker (session text)")
            conn.execute("INSERT INTO marker VALUES (%s)", (me.name,))
            conn.commit()
            data_directory = conn.execute("SHOW data_directory").fetchone()[0]
        topic = kafka_namespace.create_topic("t")
        producer = Producer({"bootstrap.servers": kafka_namespace.bootstrap_servers})
        producer.produce(topic, me.name.encode())
        assert producer.flush(30) == 0
        me.write_text(json.dumps({
            "postgres": postgres_service.address, "kafka": kafka_service.address,
            "postgres_log": str(postgres_service.log_path), "kafka_log": str(kafka_service.log_path),
            "data_directory": data_directory,
        }))
        # Hold the services until the other session has started its own, so that both run at once.
        deadline = time.monotonic() + 240
        while not other.exists():
            assert time.monotonic() < deadline, "the other session never came up"
            time.sleep(0.1)
        consumer = Consumer({"bootstrap.servers": kafka_namespace.bootstrap_servers,
                             "group.id": kafka_namespace.group("g"), "auto.offset.reset": "earliest"})
        consumer.subscribe([topic])
        seen = []
        while not seen:
            assert time.monotonic() < deadline
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                seen.append(message.value())
        consumer.close()
        assert seen == [me.name.encode()]  # only this session's message is on this broker
    """
)


def test_two_sessions_in_parallel_do_not_collide(local_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    # Shared runs root and jar cache: exactly what two developers' (or CI's) sessions would share.
    a, b = tmp_path / "session-a.json", tmp_path / "session-b.json"
    sessions = []
    for me, other in ((a, b), (b, a)):
        env = {**local_env, "INNER_ME": str(me), "INNER_OTHER": str(other), "TIDINGS_KAFKA_HEAP": "384m"}
        sessions.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    "--fail-on-skip",
                    "test_inner.py",
                ],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [session.communicate(timeout=400)[0] for session in sessions]
    for session, output in zip(sessions, outputs, strict=True):
        assert session.returncode == 0, output

    first, second = (json.loads(path.read_text()) for path in (a, b))
    assert first["postgres"] != second["postgres"]
    assert first["kafka"] != second["kafka"]
    assert first["data_directory"] != second["data_directory"]
    assert Path(first["kafka_log"]).parent != Path(second["kafka_log"]).parent
    for info in (first, second):
        # Stopped cleanly: data deleted, logs kept for diagnosis.
        assert not Path(info["data_directory"]).exists()
        assert Path(info["postgres_log"]).exists()
        assert "Kafka Server started" in Path(info["kafka_log"]).read_text()
