"""Errors raised while providing PostgreSQL and Kafka for development, tests, benchmarks and the demo.

    ServiceError
    ├── MissingPrerequisite   a program or package the chosen route needs is not installed
    └── ServiceStartFailed    the service was launched but did not become ready; the log says why

Each message names what is missing or what failed, how to fix it, and which environment variable skips
provisioning altogether by pointing at a service that already runs.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MissingPrerequisite", "ServiceError", "ServiceStartFailed"]


class ServiceError(RuntimeError):
    """A development service could not be provided."""


class MissingPrerequisite(ServiceError):
    """A program the local route needs is absent.

    Attributes:
        prerequisite: the program or package, e.g. ``"java"``.
        remedy: how to get it, or how to avoid needing it.
    """

    def __init__(self, prerequisite: str, remedy: str) -> None:
        self.prerequisite = prerequisite
        self.remedy = remedy
        super().__init__(f"missing prerequisite: {prerequisite}. {remedy}")


class ServiceStartFailed(ServiceError):
    """A service was launched but did not become ready.

    Attributes:
        service: ``"postgres"`` or ``"kafka"``.
        log_path: the service's log, kept for diagnosis.
    """

    def __init__(self, service: str, reason: str, log_path: Path | None = None, log_tail: str = "") -> None:
        self.service = service
        self.log_path = log_path
        where = f" (log: {log_path})" if log_path else ""
        tail = f"\n--- last lines of the log ---\n{log_tail}" if log_tail else ""
        super().__init__(f"{service} did not start: {reason}{where}{tail}")
