"""The released set: which schema versions have shipped, so that nobody edits one after the fact.

A lock file (``schemas/schemas.lock.json``, committed with the schemas) records, per subject, its
compatibility mode and the fingerprint of every released version. Events written with a released
version stay in the store for good, so that version must never change; new versions must be
compatible with the released ones under the subject's mode. ``tidings schemas lock`` writes the file,
``tidings schemas check`` compares the schema files with it.

Example::

    lock = Lock.load("schemas/schemas.lock.json")
    lock.compatibility("bank.AccountOpened")          # Compatibility.BACKWARD
    lock.record(SchemaSet.load("schemas")).dump("schemas/schemas.lock.json")

The released set can also come from git, as the schema files were at a revision::

    released = released_from_git("origin/main")
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tidings.avro.compatibility import Compatibility
from tidings.avro.schemas import SchemaSet
from tidings.errors import SchemaFileError

__all__ = [
    "DEFAULT_LOCK_NAME",
    "Lock",
    "SubjectLock",
    "released_from_git",
    "LockFileError",
    "GitError",
    "GitNotInstalled",
]

DEFAULT_LOCK_NAME = "schemas.lock.json"
"""The lock file's name inside the schema directory."""


class LockFileError(ValueError):
    """The lock file is missing or cannot be used; ``where`` is its path, ``problem`` what to do."""

    def __init__(self, where: str, problem: str) -> None:
        self.where, self.problem = where, problem
        super().__init__(f"{where}: {problem}")


class GitError(RuntimeError):
    """The released schemas could not be read from git: the revision or the repository is missing."""


class GitNotInstalled(GitError):
    """There is no ``git`` executable on PATH."""


@dataclass(frozen=True)
class SubjectLock:
    """One subject's entry: its compatibility mode and its released versions' fingerprints."""

    compatibility: Compatibility
    versions: dict[int, bytes] = field(default_factory=dict)
    """Version number to the 8-byte fingerprint of its schema (``SchemaVersion.fingerprint``)."""


@dataclass(frozen=True)
class Lock:
    """The released versions of every subject, as recorded in a lock file."""

    default_compatibility: Compatibility = Compatibility.BACKWARD
    """The mode of subjects the lock does not list yet; ``record`` gives it to the subjects it adds."""
    subjects: dict[str, SubjectLock] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> Lock:
        """Read a lock file.

        Raises:
            LockFileError: there is no such file, or it is not a lock file.
        """
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise LockFileError(
                where, "no lock file: run `tidings schemas lock` to record the released schema versions"
            ) from None
        try:
            return cls.from_json(json.loads(text))
        except ValueError as err:  # JSONDecodeError, a bad mode, a bad fingerprint
            raise LockFileError(
                where,
                f"not a valid lock file ({err}): restore it from git, or rebuild it (`tidings schemas lock`)",
            ) from None

    @classmethod
    def from_json(cls, document: Any) -> Lock:
        """Build from the parsed JSON of a lock file.

        Raises:
            ValueError: the document does not have the lock file's shape.
        """
        if not isinstance(document, dict) or not isinstance(document.get("subjects", {}), dict):
            raise ValueError('expected {"default_compatibility": ..., "subjects": {...}}')
        default = Compatibility(document.get("default_compatibility", Compatibility.BACKWARD.value))
        subjects = {}
        for subject, entry in document.get("subjects", {}).items():
            if not isinstance(entry, dict) or not isinstance(entry.get("versions", {}), dict):
                raise ValueError(f'{subject}: expected {{"compatibility": ..., "versions": {{...}}}}')
            versions = {
                int(n): _fingerprint(subject, n, hex_) for n, hex_ in entry.get("versions", {}).items()
            }
            mode = Compatibility(entry.get("compatibility", default.value))
            subjects[subject] = SubjectLock(mode, dict(sorted(versions.items())))
        return cls(default, dict(sorted(subjects.items())))

    def to_json(self) -> str:
        """The file's text: stable key order (versions by number), 2-space indent, a final newline."""
        document = {
            "default_compatibility": self.default_compatibility.value,
            "subjects": {
                subject: {
                    "compatibility": entry.compatibility.value,
                    "versions": {str(n): fp.hex() for n, fp in sorted(entry.versions.items())},
                }
                for subject, entry in sorted(self.subjects.items())
            },
        }
        return json.dumps(document, indent=2) + "\n"

    def dump(self, path: str | Path) -> None:
        """Write the lock file (through a temporary file, so that a failed write leaves the old one)."""
        target = Path(path)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_text(self.to_json(), encoding="utf-8")
        os.replace(temporary, target)

    def record(self, schemas: SchemaSet, *, overwrite: bool = False) -> Lock:
        """A new lock that also lists every version in ``schemas`` as released.

        Subjects keep their compatibility mode; new ones get ``default_compatibility``. Versions already
        listed keep their recorded fingerprint unless ``overwrite`` (after a deliberate edit of a released
        version). Versions listed here but absent from ``schemas`` stay listed.
        """
        subjects = {
            name: replace(entry, versions=dict(entry.versions)) for name, entry in self.subjects.items()
        }
        for version in schemas:
            entry = subjects.setdefault(version.subject, SubjectLock(self.default_compatibility))
            if overwrite or version.version not in entry.versions:
                entry.versions[version.version] = version.fingerprint
        return replace(self, subjects=subjects)

    def compatibility(self, subject: str) -> Compatibility:
        """The subject's mode, else the lock's default."""
        entry = self.subjects.get(subject)
        return entry.compatibility if entry is not None else self.default_compatibility

    def fingerprint(self, subject: str, version: int) -> bytes | None:
        """The recorded fingerprint of a released version; None if it is not released."""
        entry = self.subjects.get(subject)
        return entry.versions.get(version) if entry is not None else None


def _fingerprint(subject: str, version: str, text: Any) -> bytes:
    if not isinstance(text, str) or len(text) != 16:
        raise ValueError(f"{subject} v{version}: a fingerprint is 16 hex digits, not {text!r}")
    return bytes.fromhex(text)


def released_from_git(ref: str, directory: str | Path = "schemas", repo: str | Path = ".") -> SchemaSet:
    """The schema files under ``directory`` as they were at the git revision ``ref``.

    ``directory`` is relative to ``repo`` (the working directory git runs in). A revision without the
    directory gives an empty set: every subject is then new.

    Raises:
        GitNotInstalled: git is not on PATH.
        GitError: ``ref`` is not a revision there, or ``repo`` is not inside a git repository.
        SchemaFileError: a schema file at that revision is unreadable.
    """
    where = Path(repo) / directory
    listing = _git(where, "ls-tree", "-r", "--name-only", ref, "--", ".")
    # ls-tree prints paths relative to the directory git runs in, and "<ref>:./<path>" reads them so.
    paths = [line for line in listing.splitlines() if line.endswith(".avsc")]
    files = {path: _git(where, "show", f"{ref}:./{path}") for path in paths}
    try:
        return SchemaSet.from_texts(files)
    except SchemaFileError as err:
        raise SchemaFileError(f"{ref}:{Path(directory) / err.where}", err.problem) from None


def _git(cwd: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(cwd), *args], capture_output=True, text=True, encoding="utf-8", check=False
        )
    except FileNotFoundError:
        raise GitNotInstalled(
            "git is not installed or not on PATH: install it, or check against the lock file (--lock)"
        ) from None
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[0] if done.stderr.strip() else f"exit {done.returncode}"
        raise GitError(
            f"git {args[0]} in {cwd} failed ({detail}): name a revision of that repository "
            "(fetch it first in a shallow CI checkout: git fetch origin main)"
        )
    return done.stdout
