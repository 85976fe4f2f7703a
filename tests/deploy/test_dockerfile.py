"""The container images (Dockerfile, examples/bank/Dockerfile, .dockerignore), checked without Docker.

The Dockerfiles are read by a small parser (tests/deploy/dockerfile.py): pinned bases, a numeric
non-root user, `tidings` as the entrypoint in exec form, OCI labels, no pip cache. Then each image's
COPY instructions are replayed from the build context .dockerignore lets through, and what the image
would hold is checked: the base image's wheel is built from exactly the copied files and must carry every
module, the migrations and the console script; the bank's files must import and find their Avro schemas
from /app.
"""

from __future__ import annotations

import configparser
import os
import re
import stat
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from tests.deploy.build_context import DockerIgnore, context_files, replay, sources_of
from tests.deploy.dockerfile import Dockerfile, Stage, pinned

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "Dockerfile"
BANK = ROOT / "examples" / "bank" / "Dockerfile"
APP_USER = "10001"


def pyproject() -> dict[str, object]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert isinstance(project, dict)
    return project


def packages() -> set[str]:
    """The top-level packages the distribution ships (pyproject's packages.find include patterns)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {pattern.removesuffix("*").rstrip(".") for pattern in setuptools["packages"]["find"]["include"]}


@pytest.fixture(scope="module")
def files() -> list[str]:
    return context_files(ROOT)


# --- the Dockerfiles as written ---------------------------------------------------------------------


def test_the_base_image_is_two_stages_on_one_pinned_python() -> None:
    dockerfile = Dockerfile.parse(BASE)
    assert [s.name for s in dockerfile.stages] == ["build", "runtime"]
    # One ARG names both bases, so that --build-arg PYTHON_IMAGE=...@sha256:... pins them together and
    # the virtualenv's interpreter symlinks resolve in the runtime stage.
    default = dockerfile.global_args["PYTHON_IMAGE"]
    assert default is not None
    assert pinned(default), default
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", default), default
    assert {s.base for s in dockerfile.stages} == {default}
    digest = "python:3.11.14-slim-bookworm@sha256:" + "0" * 64
    assert {s.base for s in Dockerfile.parse(BASE, {"PYTHON_IMAGE": digest}).stages} == {digest}
    assert "@sha256:" in BASE.read_text()  # the comment that tells releases how to pin the digest


def test_the_final_stage_runs_tidings_as_a_numeric_non_root_user() -> None:
    final = Dockerfile.parse(BASE).final
    assert final.user == APP_USER
    # The account exists in /etc/passwd with that uid (tools that look the user up find it).
    assert any(re.search(rf"useradd .*--uid {APP_USER}\b", run) for run in final.runs), final.runs
    # Exec form: tidings is PID 1 and receives SIGTERM itself; a shell form would wrap it in /bin/sh.
    assert final.entrypoint == ["tidings"]
    assert final.cmd == ["--help"]
    assert final.env["PATH"].startswith("/opt/venv/bin:")
    assert "8000" in final.exposed


def test_the_runtime_stage_takes_only_the_virtualenv_from_the_build_stage() -> None:
    dockerfile = Dockerfile.parse(BASE)
    build, runtime = dockerfile.stage("build"), dockerfile.stage("runtime")
    assert any(run.strip() == "python -m venv /opt/venv" for run in build.runs)
    assert [(c.from_stage, c.sources, str(c.destination())) for c in runtime.copies] == [
        ("build", ("/opt/venv",), "/opt/venv")
    ]
    # The wheel is built from the WORKDIR the sources were copied to, and installed into the venv.
    (wheel_run,) = [run for run in build.runs if "pip wheel" in run]
    output = re.search(r"pip wheel --no-deps -w (\S+) \.(\s|$)", wheel_run)
    assert output is not None, wheel_run
    assert f"/opt/venv/bin/pip install {output.group(1)}/*.whl" in wheel_run


def test_pip_keeps_no_cache_in_any_layer() -> None:
    for stage in Dockerfile.parse(BASE).stages:
        for run in stage.runs:
            if "pip " in run:
                assert stage.env.get("PIP_NO_CACHE_DIR") == "1" or "--no-cache-dir" in run, run


def test_the_labels_follow_oci_and_agree_with_pyproject() -> None:
    labels = Dockerfile.parse(BASE).final.labels
    project = pyproject()
    prefix = "org.opencontainers.image."
    assert labels[prefix + "title"] == project["name"]
    assert labels[prefix + "version"] == project["version"]
    assert labels[prefix + "licenses"] == project["license"]
    assert labels[prefix + "description"]
    assert labels[prefix + "base.name"] == Dockerfile.parse(BASE).global_args["PYTHON_IMAGE"]


def test_the_bank_image_extends_the_base_image_it_is_given() -> None:
    bank = Dockerfile.parse(BANK)
    (stage,) = bank.stages
    # FROM ${TIDINGS_IMAGE}: compose gives the named context `tidings`, a release gives a pinned image.
    assert bank.global_args == {"TIDINGS_IMAGE": "tidings"}
    assert stage.base == "tidings"
    release = "registry.example/tidings@sha256:" + "1" * 64
    assert Dockerfile.parse(BANK, {"TIDINGS_IMAGE": release}).final.base == release
    assert stage.user == APP_USER
    assert stage.env["PYTHONPATH"] == "/app"
    assert stage.workdir == "/app"
    # The base's entrypoint (tidings) and command stay.
    assert stage.entrypoint is None
    assert stage.cmd is None
    # Root owns the code: no --chown, no --chmod that would let the app user change it.
    for copy in stage.copies:
        assert copy.from_stage is None, copy
        assert copy.flags == {}, copy
        assert str(copy.destination()).startswith("/app/")


# --- the build context ------------------------------------------------------------------------------


def test_dockerignore_follows_dockers_matching_rules() -> None:
    ignore = DockerIgnore("*\n!keep/\n**/__pycache__\n**/*.py[cod]\n!keep/special.pyc\n")
    assert ignore.excludes(".git/config")
    assert ignore.excludes("tests/test_x.py")
    assert ignore.excludes("README.md")
    assert not ignore.excludes("keep/a/b.py")
    assert ignore.excludes("keep/a/__pycache__/b.cpython-311.pyc")  # a matching directory: all below
    assert ignore.excludes("keep/b.pyo")
    assert not ignore.excludes("keep/special.pyc")  # the last matching pattern decides
    assert not ignore.may_include_below(".git")
    assert ignore.may_include_below("keep")


def test_the_context_holds_what_the_images_copy_and_nothing_else(files: list[str]) -> None:
    copied: set[str] = set()
    for path in (BASE, BANK):
        for stage in Dockerfile.parse(path).stages:
            for copy in stage.copies:
                if copy.from_stage is not None:
                    continue
                for source, matched in sources_of(copy, files).items():
                    assert matched, f"{path.relative_to(ROOT)}:{copy.line}: COPY {source}: not in the context"
                    copied.update(matched)
    assert set(files) - copied == set(), "in the build context but copied by no image"
    tops = {f.split("/")[0] for f in files}
    for unwanted in (".git", "tests", "bench", "docs", "helm", "build", ".venv", "scripts", ".ci"):
        assert unwanted not in tops
    assert not [f for f in files if "__pycache__" in f or f.endswith((".pyc", ".env")) or ".egg-info" in f]


def test_every_copied_file_is_readable_by_the_app_user(files: list[str]) -> None:
    """COPY keeps the context's modes and makes root the owner: a file the world cannot read (a checkout
    under umask 077) would be unreadable by user 10001 in the image."""
    unreadable = [f for f in files if not os.stat(ROOT / f).st_mode & stat.S_IROTH]
    assert unreadable == []


# --- what the images would hold ---------------------------------------------------------------------


def replay_stage(stage: Stage, files: list[str], into: Path) -> Path:
    """Replay the stage's COPYs from the context into ``into``; the stage's WORKDIR there."""
    for copy in stage.copies:
        assert copy.from_stage is None
        replay(copy, ROOT, files, into)
    return into / PurePosixPath(stage.workdir).relative_to("/")


@pytest.fixture(scope="module")
def wheel(files: list[str], tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel the build stage makes, built the same way from the same files (pip, build isolation)."""
    image = tmp_path_factory.mktemp("build-stage")
    workdir = replay_stage(Dockerfile.parse(BASE).stage("build"), files, image)
    out = tmp_path_factory.mktemp("wheels")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), "."],
        cwd=workdir,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (built,) = out.glob("*.whl")
    return zipfile.ZipFile(built)


def test_the_build_stage_copies_every_package_and_what_the_build_reads() -> None:
    copied = {s.rstrip("/") for c in Dockerfile.parse(BASE).stage("build").copies for s in c.sources}
    assert packages() | {"pyproject.toml", str(pyproject()["readme"])} <= copied


def test_the_wheel_holds_every_file_of_the_packages(wheel: zipfile.ZipFile, files: list[str]) -> None:
    names = set(wheel.namelist())
    packaged = {n for n in names if n.split("/")[0] in packages()}
    in_repository = {f for f in files if f.split("/")[0] in packages()}
    assert in_repository - packaged == set(), "missing from the wheel (package-data in pyproject.toml?)"
    assert packaged - in_repository == set()
    # What the store needs at run time: its migrations; and what users' type checkers need.
    assert any(n.startswith("eventstore/migrations/versions/0001_") for n in names)
    assert "eventstore/migrations/script.py.mako" in names
    assert {f"{p}/py.typed" for p in packages()} <= names
    # Nothing else: no tests, no examples, no schemas of the bank.
    tops = {n.split("/")[0] for n in names}
    assert tops - packages() == {f"tidings-{pyproject()['version']}.dist-info"}


def test_the_wheel_installs_the_tidings_console_script(wheel: zipfile.ZipFile) -> None:
    (entry_points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == {"tidings": "workers.cli:app"}


def test_the_bank_image_imports_its_workers_and_finds_its_schemas_under_app(
    files: list[str], tmp_path: Path
) -> None:
    app = replay_stage(Dockerfile.parse(BANK).final, files, tmp_path)
    assert app == tmp_path / "app"
    assert (app / "examples" / "bank" / "workers.py").is_file()
    # As the container runs it: cwd and PYTHONPATH /app, the worker's APP spec, no database yet.
    code = (
        "import pathlib, examples.bank.workers as w\n"
        "from workers.worker import load_app\n"
        "assert pathlib.Path(w.__file__).is_relative_to(pathlib.Path.cwd()), w.__file__\n"
        "assert w.SCHEMAS == pathlib.Path.cwd() / 'schemas', w.SCHEMAS\n"
        "w.mapper()\n"
        "print(load_app('examples.bank.workers:build').name)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "PYTHONPATH"}}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=app,
        env={**env, "PYTHONPATH": str(app), "TIDINGS_SCHEMA": "bank"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "bank"


def test_the_bank_image_without_its_schemas_would_fail(files: list[str], tmp_path: Path) -> None:
    """The check above has teeth: the same image without schemas/ cannot load the bank's codec."""
    stage = Dockerfile.parse(BANK).final
    stage.copies = [c for c in stage.copies if c.sources != ("schemas/",)]
    app = replay_stage(stage, files, tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", "import examples.bank.workers as w; w.mapper()"],
        cwd=app,
        env={**os.environ, "PYTHONPATH": str(app)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
