"""PostgreSQL and Kafka in containers through testcontainers, when a Docker engine answers.

testcontainers is a development extra: without it, or without an engine, this route is simply not
available and the local-process route is used.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tidings.devservices.errors import ServiceStartFailed

__all__ = ["KAFKA_IMAGE", "POSTGRES_IMAGE", "docker_available", "kafka_container", "postgres_container"]

POSTGRES_IMAGE = os.environ.get("TIDINGS_POSTGRES_IMAGE", "postgres:16-alpine")
# Confluent Platform 8.0 ships Apache Kafka 4.0 and is the image testcontainers' Kafka module drives.
KAFKA_IMAGE = os.environ.get("TIDINGS_KAFKA_IMAGE", "confluentinc/cp-kafka:8.0.0")


@functools.cache
def docker_available() -> bool:
    """True when testcontainers is installed and a Docker engine answers a ping within two seconds.

    Asked once per process: a run does not switch routes halfway.
    """
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure to reach the engine means "no Docker"
        return False


@contextmanager
def postgres_container() -> Iterator[str]:
    """A PostgreSQL container for the duration of the block; yields its libpq URL."""
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers before the community split
        from testcontainers.postgres import PostgresContainer

    container: Any = PostgresContainer(POSTGRES_IMAGE, dbname="tidings")
    with _started("postgres", POSTGRES_IMAGE, container):
        yield str(container.get_connection_url(driver=None))


@contextmanager
def kafka_container() -> Iterator[str]:
    """A single-node KRaft Kafka container for the duration of the block; yields its bootstrap address."""
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers before the community split
        from testcontainers.kafka import KafkaContainer

    container: Any = KafkaContainer(KAFKA_IMAGE).with_kraft()
    with _started("kafka", KAFKA_IMAGE, container):
        yield str(container.get_bootstrap_server())


@contextmanager
def _started(service: str, image: str, container: Any) -> Iterator[None]:
    """Run the container for the block; a failure to start it (pull, port, health) is a ServiceStartFailed."""
    try:
        container.start()
    except Exception as exc:  # docker and testcontainers raise many unrelated types
        raise ServiceStartFailed(
            service,
            f"container {image} did not start: {exc}. "
            "Set TIDINGS_SERVICES=local to use local processes instead.",
        ) from exc
    try:
        yield
    finally:
        container.stop()
