"""Real PostgreSQL and Apache Kafka on demand, for development, tests, benchmarks and the demo.

Example::

    from tidings import devservices

    with devservices.services() as running:
        print(running.postgres.address, running.kafka.address)

See ``docs/dev-services.md`` for the order of choice (environment, Docker, local processes), the
environment variables and the failure modes.
"""

from tidings.devservices.detached import DevServices, dev_down, dev_status, dev_up
from tidings.devservices.errors import MissingPrerequisite, ServiceError, ServiceStartFailed
from tidings.devservices.local_kafka import LocalKafka, check_java, wait_for_kafka
from tidings.devservices.local_postgres import LocalPostgres, find_postgres_bindir
from tidings.devservices.provide import Service, Services, kafka, postgres, preflight, route, services

__all__ = [
    # providing services
    "Service",
    "Services",
    "kafka",
    "postgres",
    "preflight",
    "route",
    "services",
    # the local route's building blocks
    "LocalKafka",
    "LocalPostgres",
    "check_java",
    "find_postgres_bindir",
    "wait_for_kafka",
    # detached services (tidings dev up|down|status)
    "DevServices",
    "dev_down",
    "dev_status",
    "dev_up",
    # errors
    "MissingPrerequisite",
    "ServiceError",
    "ServiceStartFailed",
]
