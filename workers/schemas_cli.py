"""`tidings schemas ...`: check, lock, register and start the Avro contracts under schemas/.

Exit codes, as for the rest of the command line: 0 success, 1 problems found (incompatible or edited
schemas, or a registry that refused one), 2 a usage or configuration error (an unreadable schema file,
no lock file, an unknown git revision), 3 a service that could not be reached (git, the registry).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx2
import typer
from confluent_kafka.schema_registry import Schema as RegistrySchema
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tidings.avro.binding import schema_for
from tidings.avro.checking import Finding, Severity, check_schemas
from tidings.avro.compatibility import Compatibility
from tidings.avro.lockfile import (
    DEFAULT_LOCK_NAME,
    GitError,
    GitNotInstalled,
    Lock,
    LockFileError,
    released_from_git,
)
from tidings.avro.registry import record_name, topic_record_name
from tidings.avro.schemas import SchemaSet
from tidings.errors import SchemaFileError

__all__ = ["schemas_app"]

EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_SERVICE = 3

USER_INFO_ENV = "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"

schemas_app = typer.Typer(
    help="Check, lock and register the Avro schemas of events (schemas/<namespace>/<Name>/vN.avsc).",
    no_args_is_help=True,
)

out = Console()
err = Console(stderr=True)

Directory = Annotated[Path, typer.Argument(metavar="DIR", help="The schema directory.")]
LockOption = Annotated[
    Path | None,
    typer.Option("--lock", show_default=False, help="The lock file (default: DIR/schemas.lock.json)."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]


class SubjectStrategy(StrEnum):
    RECORD = "record"
    TOPIC_RECORD = "topic-record"


@contextmanager
def _input_errors() -> Iterator[None]:
    """Turn unreadable inputs into a message that says what to do, and an exit code."""
    try:
        yield
    except (SchemaFileError, LockFileError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from exc
    except GitNotInstalled as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_SERVICE) from exc
    except GitError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from exc


def _lock_path(directory: Path, lock: Path | None) -> Path:
    return lock if lock is not None else directory / DEFAULT_LOCK_NAME


def _print_findings(findings: list[Finding], as_json: bool) -> None:
    if as_json:
        document = {
            "ok": not _errors(findings),
            "findings": [asdict(f) | {"severity": f.severity.value} for f in findings],
        }
        out.print_json(json.dumps(document))
        return
    if not findings:
        out.print("[green]ok[/]: every schema version is compatible and no released one changed")
        return
    table = Table(title="tidings schemas check")
    table.add_column("subject", no_wrap=True)
    table.add_column("version", no_wrap=True)
    table.add_column("severity", no_wrap=True)
    table.add_column("problem")
    for f in findings:
        severity = "[red]error[/]" if f.severity is Severity.ERROR else "[yellow]warning[/]"
        table.add_row(escape(f.subject), f"v{f.version}", severity, escape(f.message))
    out.print(table)


def _errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity is Severity.ERROR]


@schemas_app.command("check")
def check_command(
    directory: Directory = Path("schemas"),
    lock: LockOption = None,
    against: Annotated[
        str | None,
        typer.Option(
            "--against",
            metavar="GIT_REF",
            show_default=False,
            help="Take the released versions from this git revision instead of the lock file.",
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Check new schema versions for compatibility and released ones for edits; exit 1 on a problem.

    Released versions come from the lock file, or with --against from a git revision.
    Each subject's compatibility mode comes from the lock file (BACKWARD without one).
    Example: [bold]tidings schemas check --against origin/main[/]
    """
    if lock is not None and against is not None:
        raise typer.BadParameter("give either --lock or --against, not both", param_hint="--against")
    lock_path = _lock_path(directory, lock)
    with _input_errors():
        working = SchemaSet.load(directory)
        if against is None:
            findings = check_schemas(working, Lock.load(lock_path))
        else:
            modes = Lock.load(lock_path) if lock_path.exists() else None
            findings = check_schemas(working, released_from_git(against, directory), lock=modes)
    _print_findings(findings, as_json)
    if _errors(findings):
        raise typer.Exit(EXIT_PROBLEMS)


@schemas_app.command("lock")
def lock_command(
    directory: Directory = Path("schemas"),
    lock: LockOption = None,
    compatibility: Annotated[
        Compatibility | None,
        typer.Option(
            "--compatibility",
            case_sensitive=False,
            show_default=False,
            help="The mode of subjects new to the lock (default: the lock's, else BACKWARD).",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Lock even if `check` finds problems, re-recording edited versions."),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Record every schema version in DIR as released, after checking them; exit 1 if the check fails.

    Run it when the versions ship, and commit the lock file with them.
    --compatibility applies to subjects new to the lock; edit the file to change an existing one's mode.
    Example: [bold]tidings schemas lock --compatibility FULL[/]
    """
    lock_path = _lock_path(directory, lock)
    with _input_errors():
        working = SchemaSet.load(directory)
        current = Lock.load(lock_path) if lock_path.exists() else Lock()
    if compatibility is not None:
        current = Lock(compatibility, current.subjects)
    findings = check_schemas(working, current)
    if _errors(findings) and not force:
        _print_findings(findings, as_json=False)
        typer.echo("error: not locked: fix the problems above, or pass --force to lock anyway", err=True)
        raise typer.Exit(EXIT_PROBLEMS)
    updated = current.record(working, overwrite=force)
    updated.dump(lock_path)
    changed = [v for v in working if current.fingerprint(v.subject, v.version) != v.fingerprint]
    recorded = [
        {
            "subject": version.subject,
            "version": version.version,
            "fingerprint": version.fingerprint.hex(),
            "change": "added"
            if current.fingerprint(version.subject, version.version) is None
            else "re-recorded",
            "compatibility": updated.compatibility(version.subject).value,
        }
        for version in changed
    ]
    if as_json:
        out.print_json(json.dumps({"lock": str(lock_path), "recorded": recorded, "versions": len(working)}))
        return
    for entry in recorded:
        out.print(
            f"{entry['change']} {entry['subject']} v{entry['version']} {entry['fingerprint']} "
            f"({entry['compatibility']})"
        )
    err.print(f"{lock_path}: {len(changed)} version(s) recorded, {len(working)} in all")


@schemas_app.command("register")
def register_command(
    registry_url: Annotated[
        str,
        typer.Option(
            "--registry-url",
            envvar="SCHEMA_REGISTRY_URL",
            show_default=False,
            help="The Schema Registry (mock://... for an in-memory one); read from SCHEMA_REGISTRY_URL.",
        ),
    ],
    directory: Directory = Path("schemas"),
    subject_strategy: Annotated[
        SubjectStrategy,
        typer.Option("--subject-strategy", help="Subjects: the record's full name, or <topic>-<record>."),
    ] = SubjectStrategy.RECORD,
    topic: Annotated[
        str | None, typer.Option("--topic", show_default=False, help="The topic, for topic-record.")
    ] = None,
    lock: LockOption = None,
    as_json: AsJson = False,
) -> None:
    """Register every schema version, oldest first, after setting each subject's mode from the lock file.

    Credentials (user:password) come only from SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO.
    Exit 1 if the registry refuses a version, 3 if it cannot be reached.
    Example: [bold]SCHEMA_REGISTRY_URL=https://registry:8081 tidings schemas register[/]
    """
    subject_name: Callable[[str], str] = record_name
    if subject_strategy is SubjectStrategy.TOPIC_RECORD:
        if not topic:
            raise typer.BadParameter("--subject-strategy topic-record needs --topic", param_hint="--topic")
        subject_name = topic_record_name(topic)
    with _input_errors():
        working = SchemaSet.load(directory)
        modes = Lock.load(_lock_path(directory, lock))

    user_info = os.environ.get(USER_INFO_ENV)
    rows: list[dict[str, Any]] = []
    with _registry_errors(user_info):
        client = _connect(registry_url, user_info)
        for subject in working.subjects():
            name = subject_name(subject)
            level = modes.compatibility(subject).value
            kept = _set_compatibility(client, registry_url, name, level)
            for version in working.versions(subject):
                schema = RegistrySchema(json.dumps(version.schema), "AVRO")
                try:
                    schema_id = client.register_schema(subject_name=name, schema=schema)
                except SchemaRegistryError as exc:
                    typer.echo(
                        f"error: the registry refused {name} v{version.version} ({len(rows)} version(s) "
                        f"registered before it): {exc}; compare the subject's versions and mode with DIR",
                        err=True,
                    )
                    raise typer.Exit(EXIT_PROBLEMS) from exc
                rows.append(
                    {
                        "subject": name,
                        "version": version.version,
                        "id": schema_id,
                        "compatibility": level if kept else None,
                    }
                )

    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title="tidings schemas register")
    for column in ("subject", "version", "id", "compatibility"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        level = row["compatibility"] or "[yellow]not kept by the in-memory mock[/]"
        table.add_row(escape(row["subject"]), f"v{row['version']}", str(row["id"]), level)
    out.print(table)


def _connect(url: str, user_info: str | None) -> Any:
    conf = {"url": url}
    if user_info:
        conf["basic.auth.user.info"] = user_info
    return SchemaRegistryClient.new_client(conf)


def _set_compatibility(client: Any, url: str, subject: str, level: str) -> bool:
    """Set the subject's mode; False when the client is confluent_kafka's in-memory mock, which has none."""
    if url.startswith("mock://") and type(client).set_compatibility is SchemaRegistryClient.set_compatibility:
        return False  # the mock inherits the REST call, which cannot reach a mock:// URL
    client.set_compatibility(subject_name=subject, level=level)
    return True


@contextmanager
def _registry_errors(user_info: str | None) -> Iterator[None]:
    """Registry refusals exit 1, bad settings 2 and unreachable registries 3; credentials never show."""

    def redact(exc: Exception) -> str:
        text = f"{type(exc).__name__}: {exc}"
        return text.replace(user_info, "***") if user_info else text

    try:
        yield
    except SchemaRegistryError as exc:
        typer.echo(f"error: the registry refused: {redact(exc)}", err=True)
        raise typer.Exit(EXIT_PROBLEMS) from exc
    except ValueError as exc:  # the client's checks of its configuration
        typer.echo(f"error: bad registry settings: {redact(exc)}", err=True)
        raise typer.Exit(EXIT_USAGE) from exc
    except (OSError, httpx2.TransportError) as exc:  # confluent_kafka's client speaks HTTP with httpx2
        typer.echo(f"error: could not reach the Schema Registry: {redact(exc)}", err=True)
        raise typer.Exit(EXIT_SERVICE) from exc


@schemas_app.command("new")
def new_command(
    target: Annotated[str, typer.Argument(metavar="MODULE:CLASS", help="The event dataclass.")],
    name: Annotated[str, typer.Option("--name", metavar="TYPE_NAME", help="The event type's full name.")],
    directory: Directory = Path("schemas"),
    write: Annotated[
        bool, typer.Option("--write", help="Write DIR/<namespace>/<Name>/vN.avsc as the next version.")
    ] = False,
) -> None:
    """Print the Avro schema a dataclass implies, or write it as the subject's next version.

    Example: [bold]tidings schemas new examples.bank.events:AccountOpened --name bank.AccountOpened --write[/]
    """
    try:
        schema = schema_for(_import_class(target), name)
    except TypeError as exc:  # not a dataclass, or a field type with no Avro mapping
        raise typer.BadParameter(str(exc), param_hint="MODULE:CLASS") from None
    text = json.dumps(schema, indent=2) + "\n"
    if not write:
        typer.echo(text, nl=False)
        return
    namespace, _, short = name.rpartition(".")
    if not namespace:
        raise typer.BadParameter("name it with its namespace, like bank.AccountOpened", param_hint="--name")
    with _input_errors():
        existing = SchemaSet.load(directory) if directory.is_dir() else SchemaSet()
        latest = existing.latest(name)
        number = latest.version + 1 if latest else 1
        relative = f"{namespace}/{short}/v{number}.avsc"
        new = SchemaSet.from_texts({relative: text}).latest(name)  # the checks a schema file gets
    if latest is not None and new is not None and latest.fingerprint == new.fingerprint:
        err.print(f"unchanged: {target} matches {directory / latest.path} (nothing written)")
        return
    path = directory / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    err.print(f"wrote {path}: check it with `tidings schemas check`, then lock it when it ships")


def _import_class(target: str) -> type:
    module_name, _, class_name = target.partition(":")
    if not module_name or not class_name:
        raise typer.BadParameter("expected MODULE:CLASS, such as examples.bank.events:AccountOpened")
    # Like `python -m`, find the project's own modules from the directory the command runs in.
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise typer.BadParameter(f"cannot import {target}: {exc}") from None
    if not isinstance(cls, type):
        raise typer.BadParameter(f"{target} is not a class")
    return cls
