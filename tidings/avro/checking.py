"""Checking the schema files against the released set, before they ship.

The rules, per subject (event type):

* a released version never changes and is never deleted: events written with it stay in the store;
* a new version is compatible with the versions before it, under the subject's mode from the lock file
  (``BACKWARD`` unless it says otherwise);
* versions are numbered 1, 2, 3... without gaps;
* a brand-new subject has nothing to be compatible with, so its first version passes.

Example::

    findings = check_schemas(SchemaSet.load("schemas"), Lock.load("schemas/schemas.lock.json"))
    for finding in findings:
        print(finding)      # bank.AccountOpened v2: error: not BACKWARD compatible: ...
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from tidings.avro import compatibility
from tidings.avro.compatibility import Compatibility
from tidings.avro.lockfile import Lock
from tidings.avro.schemas import SchemaSet, SchemaVersion

__all__ = ["Finding", "Severity", "check_schemas"]


class Severity(enum.Enum):
    ERROR = "error"
    """The change must not ship."""
    WARNING = "warning"
    """Allowed, but worth a second look."""


@dataclass(frozen=True)
class Finding:
    """One problem with one version of one subject."""

    subject: str
    version: int
    severity: Severity
    message: str
    """What is wrong and what to do about it."""

    def __str__(self) -> str:
        return f"{self.subject} v{self.version}: {self.severity.value}: {self.message}"


def check_schemas(
    working: SchemaSet, released: SchemaSet | Lock, *, lock: Lock | None = None
) -> list[Finding]:
    """What is wrong with the ``working`` schema files, given the ``released`` ones; empty when nothing is.

    ``released`` is a lock file or the schema files of a git revision (``released_from_git``). Each
    subject's compatibility mode comes from ``lock``, which defaults to ``released`` when that is a lock;
    a subject the lock does not list gets the lock's default, ``BACKWARD`` without a lock.
    """
    modes = lock if lock is not None else released if isinstance(released, Lock) else Lock()
    released_fingerprints = _fingerprints(released)
    findings: list[Finding] = []
    for subject in sorted(set(working.subjects()) | set(released_fingerprints)):
        # A git revision also gives the released schemas themselves; a lock only their fingerprints.
        released_schemas = (
            {v.version: v.schema for v in released.versions(subject)}
            if isinstance(released, SchemaSet)
            else {}
        )
        findings += _check_subject(
            subject,
            working.versions(subject),
            released_fingerprints.get(subject, {}),
            released_schemas,
            modes.compatibility(subject),
        )
    return findings


def _fingerprints(released: SchemaSet | Lock) -> dict[str, dict[int, bytes]]:
    if isinstance(released, Lock):
        return {subject: dict(entry.versions) for subject, entry in released.subjects.items()}
    return {s: {v.version: v.fingerprint for v in released.versions(s)} for s in released.subjects()}


def _check_subject(
    subject: str,
    versions: list[SchemaVersion],
    released: dict[int, bytes],
    released_schemas: dict[int, dict[str, Any]],
    mode: Compatibility,
) -> list[Finding]:
    present = {v.version: v for v in versions}
    next_version = max([*present, *released], default=0) + 1
    immutable = f"released versions are immutable: restore it and add v{next_version} for the change"
    findings: list[Finding] = []

    for number, fingerprint in sorted(released.items()):
        current = present.get(number)
        if current is None:
            findings.append(_error(subject, number, f"released v{number} was deleted: {immutable}"))
        elif current.fingerprint != fingerprint:
            changed = f"fingerprint {fingerprint.hex()}, now {current.fingerprint.hex()}"
            findings.append(_error(subject, number, f"released v{number} changed ({changed}): {immutable}"))
        elif number in released_schemas and released_schemas[number] != current.schema:
            findings.append(
                Finding(
                    subject,
                    number,
                    Severity.WARNING,
                    f"released v{number} changed outside its canonical form (docs, defaults, aliases): "
                    f"defaults and aliases change how events are read, so prefer adding v{next_version}",
                )
            )

    found = ", ".join(f"v{n}" for n in sorted(present))
    for missing in sorted(set(range(1, next_version)) - set(present) - set(released)):
        findings.append(
            _error(
                subject,
                missing,
                f"v{missing} is missing: number versions 1, 2, 3... without gaps (found {found})",
            )
        )

    # Each new version must agree with every version before it, released or new in the same change,
    # just as the registry will when `tidings schemas register` sends them oldest first.
    earlier: list[dict[str, Any]] = []
    for version in versions:
        if version.version not in released:
            findings += _compatibility(version, earlier, mode)
        earlier.append(released_schemas.get(version.version, version.schema))

    return sorted(findings, key=lambda f: f.version)


def _compatibility(
    version: SchemaVersion, earlier: list[dict[str, Any]], mode: Compatibility
) -> list[Finding]:
    try:
        problems = compatibility.check(version.schema, earlier, mode)
    except ValueError as err:
        return [
            _error(version.subject, version.version, f"cannot be compared with the earlier versions: {err}")
        ]
    return [_error(version.subject, version.version, f"not {mode.value} compatible: {p}") for p in problems]


def _error(subject: str, version: int, message: str) -> Finding:
    return Finding(subject, version, Severity.ERROR, message)
