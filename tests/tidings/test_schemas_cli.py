"""`tidings schemas check | lock | register | new` on copies of the bank's schemas."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from typer.testing import CliRunner, Result

from examples.bank.events import AccountOpened
from tidings.avro.binding import schema_for
from tidings.avro.schemas import SchemaSet
from workers.cli import app

ROOT = Path(__file__).resolve().parents[2]
BANK_SUBJECTS = len(list((ROOT / "schemas" / "bank").iterdir()))

runner = CliRunner()


def _tidings(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def schemas(tmp_path: Path) -> Path:
    """A copy of schemas/bank, not locked yet."""
    shutil.copytree(ROOT / "schemas" / "bank", tmp_path / "schemas" / "bank")
    return tmp_path / "schemas"


@pytest.fixture
def locked(schemas: Path) -> Path:
    """The bank's schemas with every v1 recorded as released (all BACKWARD)."""
    result = _tidings("schemas", "lock", schemas)
    assert result.exit_code == 0, result.output
    return schemas


def _avsc(schemas: Path, subject: str, version: int) -> Path:
    namespace, name = subject.split(".")
    return schemas / namespace / name / f"v{version}.avsc"


def _add_version(
    schemas: Path, subject: str, change: Callable[[dict[str, Any]], None], version: int = 2
) -> None:
    """Write ``version`` of ``subject`` as v1 changed by ``change``."""
    schema = json.loads(_avsc(schemas, subject, 1).read_text())
    change(schema)
    _avsc(schemas, subject, version).write_text(json.dumps(schema, indent=2))


def _add_field(field: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda schema: schema["fields"].append(field)


def _remove_field(name: str) -> Callable[[dict[str, Any]], None]:
    def change(schema: dict[str, Any]) -> None:
        schema["fields"] = [f for f in schema["fields"] if f["name"] != name]

    return change


def _set_mode(schemas: Path, subject: str, mode: str) -> None:
    lock_file = schemas / "schemas.lock.json"
    document = json.loads(lock_file.read_text())
    document["subjects"][subject]["compatibility"] = mode
    lock_file.write_text(json.dumps(document))


def _findings(*args: str | Path) -> tuple[int, list[dict[str, Any]]]:
    result = _tidings("schemas", "check", *args, "--json")
    report = json.loads(result.stdout)
    assert report["ok"] is (result.exit_code == 0)
    return result.exit_code, report["findings"]


# --- check ------------------------------------------------------------------------------------------


def test_check_passes_for_the_released_bank_schemas(locked: Path) -> None:
    result = _tidings("schemas", "check", locked)
    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout


def test_a_field_added_with_a_default_passes_backward(locked: Path) -> None:
    _add_version(
        locked, "bank.AccountOpened", _add_field({"name": "branch", "type": "string", "default": ""})
    )
    assert _findings(locked) == (0, [])


def test_a_field_added_without_a_default_fails_naming_the_field_and_the_mode(locked: Path) -> None:
    _add_version(locked, "bank.AccountOpened", _add_field({"name": "branch", "type": "string"}))

    code, findings = _findings(locked)

    assert code == 1
    [finding] = findings
    assert (finding["subject"], finding["version"], finding["severity"]) == ("bank.AccountOpened", 2, "error")
    assert "BACKWARD" in finding["message"]
    assert "'branch'" in finding["message"]
    assert "default" in finding["message"]


def test_the_table_names_the_failing_subject(locked: Path) -> None:
    _add_version(locked, "bank.AccountOpened", _add_field({"name": "branch", "type": "string"}))
    result = _tidings("schemas", "check", locked)
    assert result.exit_code == 1
    assert "bank.AccountOpened" in result.stdout
    assert "v2" in result.stdout


def test_a_modified_released_version_fails_as_immutable(locked: Path) -> None:
    v1 = _avsc(locked, "bank.MoneyDeposited", 1)
    v1.write_text(v1.read_text().replace('"balance"', '"new_balance"'))

    code, findings = _findings(locked)

    assert code == 1
    [finding] = findings
    assert (finding["subject"], finding["version"]) == ("bank.MoneyDeposited", 1)
    assert "released versions are immutable: restore it and add v2" in finding["message"]


def test_a_deleted_released_version_fails(locked: Path) -> None:
    _add_version(locked, "bank.AccountClosed", lambda schema: None)
    _avsc(locked, "bank.AccountClosed", 1).unlink()

    code, findings = _findings(locked)

    assert code == 1
    assert [(f["subject"], f["version"]) for f in findings] == [("bank.AccountClosed", 1)]
    assert "released v1 was deleted" in findings[0]["message"]
    assert "immutable" in findings[0]["message"]


def test_a_deleted_subject_fails_for_each_released_version(locked: Path) -> None:
    shutil.rmtree(locked / "bank" / "TransferFailed")
    code, findings = _findings(locked)
    assert code == 1
    assert [(f["subject"], f["version"]) for f in findings] == [("bank.TransferFailed", 1)]


# Adding a field without a default breaks old events for the new reader (BACKWARD); removing one that
# has no default breaks new events for old readers (FORWARD); FULL needs both.
@pytest.mark.parametrize(
    ("mode", "adding_fails", "removing_fails"),
    [("BACKWARD", True, False), ("FORWARD", False, True), ("FULL", True, True), ("NONE", False, False)],
)
def test_each_subject_is_checked_under_its_mode_from_the_lock(
    locked: Path, mode: str, adding_fails: bool, removing_fails: bool
) -> None:
    _set_mode(locked, "bank.AccountOpened", mode)
    _set_mode(locked, "bank.MoneyWithdrawn", mode)
    _add_version(locked, "bank.AccountOpened", _add_field({"name": "branch", "type": "string"}))
    _add_version(locked, "bank.MoneyWithdrawn", _remove_field("balance"))
    # Another subject keeps BACKWARD, under which removing a field is fine.
    _add_version(locked, "bank.MoneyDeposited", _remove_field("balance"))

    code, findings = _findings(locked)

    failing = {f["subject"] for f in findings}
    expected = {"bank.AccountOpened"} if adding_fails else set()
    expected |= {"bank.MoneyWithdrawn"} if removing_fails else set()
    assert failing == expected
    assert code == (1 if expected else 0)
    assert all(f"not {mode} compatible" in f["message"] for f in findings)


def test_the_lock_default_applies_to_subjects_it_does_not_list(locked: Path) -> None:
    lock_file = locked / "schemas.lock.json"
    document = json.loads(lock_file.read_text())
    del document["subjects"]["bank.MoneyWithdrawn"]
    document["default_compatibility"] = "FORWARD"
    lock_file.write_text(json.dumps(document))
    # Unlisted, v1 and v2 are both new: v2 is checked against v1 under the default, FORWARD.
    _add_version(locked, "bank.MoneyWithdrawn", _remove_field("balance"))

    code, findings = _findings(locked)

    assert code == 1
    assert [(f["subject"], f["version"]) for f in findings] == [("bank.MoneyWithdrawn", 2)]
    assert "not FORWARD compatible" in findings[0]["message"]


def test_non_contiguous_versions_fail(locked: Path) -> None:
    _add_version(
        locked, "bank.AccountOpened", _add_field({"name": "x", "type": "int", "default": 0}), version=3
    )

    code, findings = _findings(locked)

    assert code == 1
    [finding] = findings
    assert (finding["subject"], finding["version"]) == ("bank.AccountOpened", 2)
    assert "v2 is missing" in finding["message"]
    assert "found v1, v3" in finding["message"]


def test_a_brand_new_subject_passes(locked: Path) -> None:
    (locked / "shop" / "OrderPlaced").mkdir(parents=True)
    order = {
        "type": "record",
        "name": "OrderPlaced",
        "namespace": "shop",
        "fields": [{"name": "id", "type": "string"}],
    }
    (locked / "shop" / "OrderPlaced" / "v1.avsc").write_text(json.dumps(order))
    assert _findings(locked) == (0, [])


def test_json_output_parses_with_one_entry_per_finding(locked: Path) -> None:
    _add_version(locked, "bank.AccountOpened", _add_field({"name": "branch", "type": "string"}))
    _add_version(locked, "bank.TransferFailed", _add_field({"name": "retry", "type": "boolean"}))

    result = _tidings("schemas", "check", locked, "--json")

    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [(f["subject"], f["version"]) for f in report["findings"]] == [
        ("bank.AccountOpened", 2),
        ("bank.TransferFailed", 2),
    ]
    assert set(report["findings"][0]) == {"subject", "version", "severity", "message"}


def test_a_missing_lock_file_is_a_usage_error_that_says_to_lock(schemas: Path) -> None:
    result = _tidings("schemas", "check", schemas)
    assert result.exit_code == 2
    assert "run `tidings schemas lock`" in result.stderr
    assert str(schemas / "schemas.lock.json") in result.stderr


def test_an_unreadable_schema_file_is_a_usage_error(locked: Path) -> None:
    _avsc(locked, "bank.AccountOpened", 2).write_text("{not json")
    result = _tidings("schemas", "check", locked)
    assert result.exit_code == 2
    assert "v2.avsc: not JSON" in result.stderr


def test_a_corrupt_lock_file_is_a_usage_error(locked: Path) -> None:
    (locked / "schemas.lock.json").write_text(
        '{"subjects": {"bank.AccountOpened": {"versions": {"1": "xyz"}}}}'
    )
    result = _tidings("schemas", "check", locked)
    assert result.exit_code == 2
    assert "not a valid lock file" in result.stderr


# --- lock -------------------------------------------------------------------------------------------


def test_lock_records_every_version_then_check_passes(schemas: Path) -> None:
    result = _tidings("schemas", "lock", schemas)

    assert result.exit_code == 0, result.output
    assert result.stdout.count("added bank.") == BANK_SUBJECTS
    assert "added bank.AccountOpened v1 fc859a4f2536f068 (BACKWARD)" in result.stdout
    text = (schemas / "schemas.lock.json").read_text()
    assert text.endswith("}\n")
    assert '\n  "subjects": {\n    "bank.AccountClosed": {' in text  # 2-space indent, sorted
    lock = json.loads(text)
    recorded = {s: e["versions"]["1"] for s, e in lock["subjects"].items()}
    assert recorded == {v.subject: v.fingerprint.hex() for v in SchemaSet.load(schemas)}
    assert {e["compatibility"] for e in lock["subjects"].values()} == {"BACKWARD"}
    assert _tidings("schemas", "check", schemas).exit_code == 0


def test_lock_adds_new_versions_and_keeps_modes(locked: Path) -> None:
    _set_mode(locked, "bank.AccountOpened", "FULL")
    _add_version(
        locked, "bank.AccountOpened", _add_field({"name": "branch", "type": "string", "default": ""})
    )

    result = _tidings("schemas", "lock", locked, "--compatibility", "forward")

    assert result.exit_code == 0, result.output
    assert (
        result.stdout.strip()
        == f"added bank.AccountOpened v2 {_fingerprint(locked, 'bank.AccountOpened', 2)} (FULL)"
    )
    lock = json.loads((locked / "schemas.lock.json").read_text())
    assert lock["default_compatibility"] == "FORWARD"
    assert lock["subjects"]["bank.AccountOpened"] == {
        "compatibility": "FULL",
        "versions": {"1": "fc859a4f2536f068", "2": _fingerprint(locked, "bank.AccountOpened", 2)},
    }
    assert lock["subjects"]["bank.MoneyDeposited"]["compatibility"] == "BACKWARD"


def _fingerprint(schemas: Path, subject: str, version: int) -> str:
    return next(
        v.fingerprint.hex() for v in SchemaSet.load(schemas) if (v.subject, v.version) == (subject, version)
    )


def test_lock_refuses_when_check_fails_unless_forced(locked: Path) -> None:
    lock_file = locked / "schemas.lock.json"
    before = lock_file.read_text()
    _add_version(locked, "bank.AccountOpened", _add_field({"name": "branch", "type": "string"}))

    refused = _tidings("schemas", "lock", locked)

    assert refused.exit_code == 1
    assert "not locked" in refused.stderr
    assert lock_file.read_text() == before

    forced = _tidings("schemas", "lock", locked, "--force")
    assert forced.exit_code == 0, forced.output
    assert "added bank.AccountOpened v2" in forced.stdout
    assert _tidings("schemas", "check", locked).exit_code == 0


# --- check --against a git revision -----------------------------------------------------------------


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def committed(schemas: Path) -> Path:
    """The bank's schemas committed to a fresh git repository (no lock file)."""
    repo = schemas.parent
    _git(repo, "init", "-q")
    _git(repo, "add", "schemas")
    _git(repo, "commit", "-q", "-m", "bank schemas")
    return schemas


def test_check_against_head_of_a_git_repository(committed: Path) -> None:
    assert _findings(committed, "--against", "HEAD") == (0, [])

    _add_version(committed, "bank.AccountOpened", _add_field({"name": "branch", "type": "string"}))
    v1 = _avsc(committed, "bank.MoneyDeposited", 1)
    v1.write_text(v1.read_text().replace('"balance"', '"new_balance"'))

    code, findings = _findings(committed, "--against", "HEAD")

    assert code == 1
    assert [(f["subject"], f["version"]) for f in findings] == [
        ("bank.AccountOpened", 2),
        ("bank.MoneyDeposited", 1),
    ]
    assert "not BACKWARD compatible" in findings[0]["message"]
    assert "immutable" in findings[1]["message"]


def test_check_against_git_takes_modes_from_the_lock_file(committed: Path) -> None:
    assert _tidings("schemas", "lock", committed).exit_code == 0
    _set_mode(committed, "bank.AccountOpened", "FORWARD")
    _add_version(committed, "bank.AccountOpened", _add_field({"name": "branch", "type": "string"}))
    assert _findings(committed, "--against", "HEAD") == (0, [])


def test_check_against_git_warns_of_edits_outside_the_canonical_form(committed: Path) -> None:
    v1 = _avsc(committed, "bank.AccountClosed", 1)
    v1.write_text(json.dumps(json.loads(v1.read_text()) | {"doc": "An account was closed."}))

    code, findings = _findings(committed, "--against", "HEAD")

    assert code == 0
    assert [(f["subject"], f["version"], f["severity"]) for f in findings] == [
        ("bank.AccountClosed", 1, "warning")
    ]
    assert "prefer adding v2" in findings[0]["message"]


def test_check_against_an_unknown_revision_is_a_usage_error(committed: Path) -> None:
    result = _tidings("schemas", "check", committed, "--against", "no-such-branch")
    assert result.exit_code == 2
    assert "git ls-tree" in result.stderr
    assert "name a revision" in result.stderr


# --- register ---------------------------------------------------------------------------------------


# The mock's class, without importing it from confluent_kafka's private modules.
_MockClient: type[Any] = type(SchemaRegistryClient.new_client({"url": "mock://probe"}))


class _RecordingMock(_MockClient):  # type: ignore[misc]
    """confluent_kafka's in-memory mock registry, which also keeps compatibility levels."""

    created: ClassVar[list[_RecordingMock]] = []

    def __init__(self, conf: dict[str, Any]) -> None:
        super().__init__(conf)
        self.conf = conf
        self.calls: list[tuple[str, str, str]] = []
        _RecordingMock.created.append(self)

    def set_compatibility(self, subject_name: str | None = None, level: str | None = None) -> str:
        assert subject_name is not None
        assert level is not None
        self.calls.append(("set_compatibility", subject_name, level))
        return level

    def register_schema(self, subject_name: str, schema: Any, normalize_schemas: bool = False) -> int:
        self.calls.append(("register_schema", subject_name, schema.schema_str))
        schema_id: int = super().register_schema(subject_name, schema, normalize_schemas)
        return schema_id


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Callable[[], _RecordingMock]:
    """Every client the command creates is a _RecordingMock; returns the one it created."""
    _RecordingMock.created = []
    monkeypatch.setattr(SchemaRegistryClient, "new_client", staticmethod(_RecordingMock))
    monkeypatch.delenv("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", raising=False)

    def created() -> _RecordingMock:
        [client] = _RecordingMock.created
        return client

    return created


def test_register_with_the_in_memory_mock_registry_registers_every_version_and_sets_modes(
    locked: Path, registry: Callable[[], _RecordingMock]
) -> None:
    _set_mode(locked, "bank.AccountOpened", "FULL")
    _add_version(
        locked, "bank.AccountOpened", _add_field({"name": "branch", "type": "string", "default": ""})
    )

    result = _tidings("schemas", "register", locked, "--registry-url", "mock://bank", "--json")

    assert result.exit_code == 0, result.output
    client = registry()
    working = SchemaSet.load(locked)
    for subject in working.subjects():
        assert sorted(client.get_versions(subject)) == [v.version for v in working.versions(subject)]
        # The mode is set before the subject's first version is registered.
        first = next(i for i, call in enumerate(client.calls) if call[1] == subject)
        mode = "FULL" if subject == "bank.AccountOpened" else "BACKWARD"
        assert client.calls[first] == ("set_compatibility", subject, mode)
    registered = [
        json.loads(c[2]) for c in client.calls if c[:2] == ("register_schema", "bank.AccountOpened")
    ]
    assert registered == [v.schema for v in working.versions("bank.AccountOpened")]  # oldest first
    rows = json.loads(result.stdout)
    assert len(rows) == BANK_SUBJECTS + 1
    assert {(r["subject"], r["version"]) for r in rows} == {(v.subject, v.version) for v in working}
    assert len({r["id"] for r in rows}) == len(rows)


def test_register_with_the_in_memory_mock_registry_under_topic_record_names(
    locked: Path, registry: Callable[[], _RecordingMock]
) -> None:
    result = _tidings(
        "schemas", "register", locked, "--registry-url", "mock://bank", "--subject-strategy", "topic-record",
        "--topic", "bank-events",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(registry().get_subjects()) == sorted(
        f"bank-events-{s}" for s in SchemaSet.load(locked).subjects()
    )


class _RefusingMock(_RecordingMock):
    def register_schema(self, subject_name: str, schema: Any, normalize_schemas: bool = False) -> int:
        if subject_name == "bank.MoneyDeposited":
            raise SchemaRegistryError(
                409, 409, "Schema being registered is incompatible with an earlier schema"
            )
        return super().register_schema(subject_name, schema, normalize_schemas)


class _UnreachableMock(_RecordingMock):
    def set_compatibility(self, subject_name: str | None = None, level: str | None = None) -> str:
        raise ConnectionRefusedError(111, "Connection refused")


@pytest.mark.parametrize(
    ("client", "exit_code", "message"),
    [
        (_RefusingMock, 1, "the registry refused bank.MoneyDeposited v1 (3 version(s) registered before it)"),
        (_UnreachableMock, 3, "could not reach the Schema Registry: ConnectionRefusedError"),
    ],
)
def test_register_reports_a_refusing_or_unreachable_registry(
    locked: Path, monkeypatch: pytest.MonkeyPatch, client: type[_RecordingMock], exit_code: int, message: str
) -> None:
    monkeypatch.setattr(SchemaRegistryClient, "new_client", staticmethod(client))
    result = _tidings("schemas", "register", locked, "--registry-url", "mock://bank")
    assert result.exit_code == exit_code
    assert message in result.stderr


def test_register_needs_a_topic_for_topic_record_names(locked: Path) -> None:
    result = _tidings(
        "schemas", "register", locked, "--registry-url", "mock://bank", "--subject-strategy", "topic-record"
    )
    assert result.exit_code == 2
    assert "--topic" in result.output


def test_register_takes_the_url_and_credentials_from_the_environment_and_never_prints_them(
    locked: Path, registry: Callable[[], _RecordingMock], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", "mock://from-env")
    monkeypatch.setenv("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "app:s3cret-pa55")

    result = _tidings("schemas", "register", locked)

    assert result.exit_code == 0, result.output
    assert registry().conf == {"url": "mock://from-env", "basic.auth.user.info": "app:s3cret-pa55"}
    assert "s3cret-pa55" not in result.output


def test_register_with_the_stock_in_memory_mock_registry_says_modes_are_not_kept(locked: Path) -> None:
    result = _tidings("schemas", "register", locked, "--registry-url", "mock://stock", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["subject"], r["version"]) for r in rows] == [
        (v.subject, v.version) for v in SchemaSet.load(locked)
    ]
    assert {r["compatibility"] for r in rows} == {None}


def test_register_needs_the_lock_file(schemas: Path) -> None:
    result = _tidings("schemas", "register", schemas, "--registry-url", "mock://bank")
    assert result.exit_code == 2
    assert "run `tidings schemas lock`" in result.stderr


# --- new --------------------------------------------------------------------------------------------


def test_new_prints_the_schema_the_class_implies() -> None:
    result = _tidings("schemas", "new", "examples.bank.events:AccountOpened", "--name", "bank.AccountOpened")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == schema_for(AccountOpened, "bank.AccountOpened")


def test_new_writes_the_next_version_only_when_it_changes(tmp_path: Path, schemas: Path) -> None:
    target = "examples.bank.events:AccountOpened"
    fresh = tmp_path / "fresh"

    written = _tidings("schemas", "new", target, "--name", "bank.AccountOpened", fresh, "--write")

    assert written.exit_code == 0, written.output
    [version] = SchemaSet.load(fresh)
    assert (version.subject, version.version) == ("bank.AccountOpened", 1)
    assert version.schema == schema_for(AccountOpened, "bank.AccountOpened")

    unchanged = _tidings("schemas", "new", target, "--name", "bank.AccountOpened", schemas, "--write")
    assert unchanged.exit_code == 0, unchanged.output
    assert "unchanged" in unchanged.stderr
    assert not _avsc(schemas, "bank.AccountOpened", 2).exists()


def test_new_rejects_what_it_cannot_import() -> None:
    result = _tidings("schemas", "new", "examples.bank.events:NoSuchEvent", "--name", "bank.NoSuchEvent")
    assert result.exit_code == 2
    assert "cannot import" in result.output


@pytest.mark.parametrize("command", ["check", "lock", "register", "new"])
def test_every_schemas_command_has_help_with_an_example(command: str) -> None:
    result = _tidings("schemas", command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout
