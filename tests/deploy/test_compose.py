"""docker-compose.yml, checked without Docker.

It follows the Compose specification (its JSON schema, from the compose-go module); what it builds exists
and starts from pinned images; each tidings service runs a command the installed CLI accepts, with an
environment that points at the right services; the worker's APP loads; the services start in the order
postgres -> migrate -> relay -> worker -> demo, each waiting for what it needs to be healthy or done;
and the healthchecks probe the ports the commands serve, passing only while the process is ready.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
from typer.main import get_command

from tests.deploy import tools
from tests.deploy.cli_contract import run_tidings, variables_read_by
from tests.deploy.compose_file import interpolate, load, read, references
from tests.deploy.dockerfile import Dockerfile, pinned
from workers.cli import app as cli_app
from workers.probes import Probes
from workers.worker import AppNotFound, load_app

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
GUIDE = ROOT / "docs" / "docker.md"
TIDINGS_SERVICES = ("tidings", "migrate", "relay", "worker", "demo")
"""The services that run a tidings image: the base (tidings) or the bank's, built FROM it."""
ONE_SHOTS = {"tidings", "migrate", "demo"}
"""Services that do their job and exit 0; the others run until stopped."""


@functools.cache
def compose(password: str | None = None) -> dict[str, Any]:
    """The file as compose reads it, with POSTGRES_PASSWORD unset or set to ``password``."""
    return load(COMPOSE, {} if password is None else {"POSTGRES_PASSWORD": password})


def services() -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"]
    return found


def argv(service: str) -> list[str]:
    """The arguments the service gives the image's entrypoint (its command, else the image's CMD)."""
    definition = services()[service]
    if "command" in definition:
        command = definition["command"]
        assert isinstance(command, list), f"{service}: exec form, so that no shell parses the command"
        return [str(word) for word in command]
    cmd = dockerfile_of(service).final.cmd
    assert isinstance(cmd, list), cmd
    return cmd


def option(args: list[str], name: str) -> str | None:
    for i, word in enumerate(args):
        if word == name:
            return args[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def dockerfile_of(service: str) -> Dockerfile:
    build = services()[service]["build"]
    context = ROOT / build["context"]
    return Dockerfile.parse(context / build.get("dockerfile", "Dockerfile"), build.get("args"))


# --- the file -----------------------------------------------------------------------------------------


@functools.cache
def specification() -> jsonschema.protocols.Validator:
    module, path = tools.COMPOSE_SPEC
    schema = json.loads((tools.go_module(*module) / path).read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator: jsonschema.protocols.Validator = validator_class(schema)
    return validator


@pytest.mark.parametrize("password", [None, "s3cret"])
def test_the_file_follows_the_compose_specification(password: str | None) -> None:
    errors = sorted(specification().iter_errors(compose(password)), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_specification_rejects_a_broken_file() -> None:
    """The validation has teeth: a misspelt condition and an unknown key are refused."""
    broken = copy.deepcopy(compose())
    broken["services"]["relay"]["depends_on"]["kafka"]["condition"] = "service_ready"
    broken["services"]["worker"]["helthcheck"] = broken["services"]["worker"].pop("healthcheck")
    paths = {tuple(e.absolute_path) for e in specification().iter_errors(broken)}
    assert ("services", "relay", "depends_on") in paths  # its list or mapping form (oneOf) is wrong
    assert ("services", "worker") in paths


def test_every_variable_has_a_default_and_is_documented() -> None:
    guide = GUIDE.read_text()
    found = references(read(COMPOSE))
    assert ("POSTGRES_PASSWORD", ":-") in found
    for name, operator in found:
        # Without one, compose puts an empty string in its place with a mere warning (a `:?` refuses).
        assert operator in {":-", "-", ":?", "?"}, f"${{{name}}} has no default"
        assert f"`{name}`" in guide, f"{name} is not described in docs/docker.md"


def test_interpolation_follows_compose() -> None:
    """The loader these checks rely on substitutes as compose does."""
    env = {"SET": "x", "EMPTY": ""}
    assert (
        interpolate("$SET ${SET} $$SET ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET}.", env)
        == "x x $SET d d  ."
    )
    assert references({"a": ["$$X ${Y:-1}", {"b": "$Z"}]}) == [("Y", ":-"), ("Z", None)]
    with pytest.raises(ValueError, match="REQUIRED"):
        interpolate("${REQUIRED:?set it}", env)


# --- what it builds -----------------------------------------------------------------------------------


def test_the_tidings_services_are_the_ones_built_from_this_repository() -> None:
    built = {name for name, s in services().items() if "build" in s}
    assert built == set(TIDINGS_SERVICES)
    for name in TIDINGS_SERVICES:
        # Built from the checkout every time, never pulled: tidings:dev on a registry is not this code.
        assert services()[name]["pull_policy"] == "build", name
        # The image's entrypoint is tidings; the services only give it arguments.
        assert "entrypoint" not in services()[name], name
        assert dockerfile_of(name).final.entrypoint in (None, ["tidings"])


def test_every_build_context_and_dockerfile_exists_and_every_base_is_pinned_or_named() -> None:
    for name, service in services().items():
        if "build" not in service:
            continue
        build = service["build"]
        context = (ROOT / build["context"]).resolve()
        assert context.is_dir(), name
        assert context.is_relative_to(ROOT), name
        assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        named = build.get("additional_contexts", {})
        for key, target in named.items():
            # `service:X` is the image compose builds for X, built first; X must be buildable.
            assert target.startswith("service:"), f"{name}: context {key} is {target}"
            assert "build" in services()[target.removeprefix("service:")], f"{name}: {target}"
        dockerfile = dockerfile_of(name)
        earlier: set[str] = set()
        for stage in dockerfile.stages:
            assert stage.base in earlier or stage.base in named or pinned(stage.base), (
                f"{name}: FROM {stage.base} is neither pinned, an earlier stage nor a named context"
            )
            if stage.name:
                earlier.add(stage.name)
        for key in named:
            assert any(stage.base == key for stage in dockerfile.stages), f"{name}: context {key} unused"


def test_the_bank_image_is_built_from_the_base_image_compose_builds() -> None:
    base = services()["tidings"]
    assert base["build"]["context"] == "."
    assert base["build"].get("dockerfile", "Dockerfile") == "Dockerfile"
    bank = {name: services()[name] for name in TIDINGS_SERVICES if name != "tidings"}
    images = {s["image"] for s in bank.values()}
    builds = [s["build"] for s in bank.values()]
    # One image, one build: compose builds it once and every bank service runs the same code.
    assert len(images) == 1
    assert all(b == builds[0] for b in builds)
    assert builds[0]["dockerfile"] == "examples/bank/Dockerfile"
    assert builds[0]["additional_contexts"] == {"tidings": "service:tidings"}
    assert images.isdisjoint({base["image"]})


def test_the_images_pulled_from_a_registry_are_pinned() -> None:
    pulled = {name: s["image"] for name, s in services().items() if "build" not in s}
    assert set(pulled) == {"postgres", "kafka"}
    for name, image in pulled.items():
        assert pinned(image), f"{name}: {image} names no single release"


# --- the commands and their environment ---------------------------------------------------------------


def shared_environment() -> dict[str, str]:
    env: dict[str, str] = compose()["x-tidings-env"]
    return env


def test_the_tidings_services_share_one_environment() -> None:
    for name in TIDINGS_SERVICES:
        if name != "tidings":
            assert services()[name]["environment"] == shared_environment(), name
    assert shared_environment()["TIDINGS_SCHEMA"] == "bank"
    assert shared_environment()["TIDINGS_APP"] == "bank"
    assert shared_environment()["TIDINGS_LOG_FORMAT"] == "json"


@pytest.mark.parametrize("password", [None, "s3cret"])
def test_the_environment_points_at_the_services(password: str | None) -> None:
    everything = compose(password)
    postgres = everything["services"]["postgres"]["environment"]
    url = urlsplit(everything["x-tidings-env"]["DATABASE_URL"])
    assert url.scheme == "postgresql"
    assert (url.hostname, url.port, url.path) == ("postgres", 5432, "/" + postgres["POSTGRES_DB"])
    assert url.username == "postgres"
    assert url.password == postgres["POSTGRES_PASSWORD"] == (password or "tidings")
    kafka = everything["services"]["kafka"]["environment"]
    advertised = dict(item.split("://") for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert everything["x-tidings-env"]["KAFKA_BOOTSTRAP_SERVERS"] == advertised["PLAINTEXT"]


def test_every_shared_variable_is_read_by_a_command() -> None:
    read_somewhere = set().union(*(variables_read_by(argv(name)) for name in TIDINGS_SERVICES))
    assert set(shared_environment()) - read_somewhere == set(), "set, but read by no command: a typo?"


@pytest.mark.parametrize("service", TIDINGS_SERVICES)
def test_each_command_is_one_the_cli_accepts(service: str) -> None:
    # click refuses an unknown command or option before it honours --help (the next test shows it).
    result = run_tidings(*argv(service), "--help")
    assert result.returncode == 0, f"{service}: tidings {' '.join(argv(service))}: {result.stderr}"


@pytest.mark.parametrize(
    "args",
    [["relay", "--app", "bank", "--no-such-option", "1"], ["no-such-command"], ["worker", "--prot", "8000"]],
)
def test_help_does_not_hide_an_unknown_command_or_option(args: list[str]) -> None:
    result = run_tidings(*args, "--help")
    assert result.returncode == 2, result.stdout


def test_the_worker_runs_the_bank_app_on_the_relays_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    worker, relay = argv("worker"), argv("relay")
    assert worker[0] == "worker"
    assert relay[0] == "relay"
    spec = worker[1]
    # As the container has it: the shared environment and nothing else of ours, but no database to
    # create the read model in.
    for name in [n for n in os.environ if n.startswith("TIDINGS_") or n == "DATABASE_URL"]:
        monkeypatch.delenv(name)
    for name, value in shared_environment().items():
        if name != "DATABASE_URL":
            monkeypatch.setenv(name, value)
    app = load_app(spec)
    # The worker reads <app>.events, the relay's topic; its handlers' consumer groups carry the name.
    assert app.name == option(relay, "--app") == shared_environment()["TIDINGS_APP"]
    assert sorted(h.name for h in app.handlers) == ["bank.balances", "bank.transfers"]
    # Topics the worker creates (by-key, dead letters) get as many partitions as the relay's.
    assert option(worker, "--partitions") == option(relay, "--partitions") is not None


def test_a_worker_app_that_does_not_exist_does_not_load() -> None:
    with pytest.raises(AppNotFound, match="no_such_attribute"):
        load_app("examples.bank.workers:no_such_attribute")


# --- start-up order and health ------------------------------------------------------------------------


def test_the_services_start_in_order_each_waiting_for_what_it_needs() -> None:
    depends = {
        name: {target: spec["condition"] for target, spec in s.get("depends_on", {}).items()}
        for name, s in services().items()
    }
    assert depends == {
        "postgres": {},
        "kafka": {},
        "tidings": {},
        "migrate": {"postgres": "service_healthy"},
        "relay": {"migrate": "service_completed_successfully", "kafka": "service_healthy"},
        "worker": {"relay": "service_healthy"},
        "demo": {"worker": "service_healthy"},
    }
    for name, targets in depends.items():
        for target, condition in targets.items():
            if condition == "service_healthy":
                assert "healthcheck" in services()[target], f"{name} waits for {target} to be healthy"
            if condition == "service_completed_successfully":
                assert target in ONE_SHOTS, f"{name} waits for {target} to finish"


def test_long_running_services_have_healthchecks_and_one_shots_are_not_restarted() -> None:
    for name, service in services().items():
        if name in ONE_SHOTS:
            # `always` or `unless-stopped` would run a finished one-shot again, forever.
            assert service.get("restart", "no") in {"no", "on-failure"}, name
            assert "healthcheck" not in service, name
        else:
            assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name
    for name in ("relay", "worker"):
        assert services()[name]["restart"] == "unless-stopped"


def readyz_of(service: str) -> tuple[list[str], str]:
    """The healthcheck's command line (CMD form) and the URL in its Python code."""
    test = services()[service]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    (url,) = re.findall(r"http://[^'\"\s]+", test[3])
    return test[1:], url


@pytest.mark.parametrize("service", ["relay", "worker"])
def test_the_healthcheck_probes_the_port_the_command_serves(service: str) -> None:
    _, url = readyz_of(service)
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1"
    assert parts.path == "/readyz"
    port = option(argv(service), "--port")
    assert port is not None
    assert parts.port == int(port)


@pytest.mark.parametrize("service", ["relay", "worker"])
def test_the_healthcheck_passes_only_while_the_process_is_ready(service: str) -> None:
    command, url = readyz_of(service)
    ready = {"now": True}
    probes = Probes(lambda: (ready["now"], {"ready": ready["now"]}), host="127.0.0.1", port=0)
    probes.start()
    try:
        code = command[2].replace(url, url.replace(f":{urlsplit(url).port}/", f":{probes.port}/"))

        def check() -> int:
            return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30).returncode

        assert check() == 0
        ready["now"] = False  # /readyz answers 503
        assert check() != 0
    finally:
        probes.stop()
    assert check() != 0  # nothing listens


def test_a_stopping_worker_gets_the_time_its_shutdown_takes() -> None:
    worker = get_command(cli_app).commands["worker"]  # type: ignore[attr-defined]
    (param,) = [p for p in worker.params if p.name == "shutdown_timeout"]
    timeout = float(option(argv("worker"), "--shutdown-timeout") or param.default)
    grace = services()["worker"]["stop_grace_period"]
    match = re.fullmatch(r"(\d+)s", grace)
    assert match is not None, grace
    # The worker stops within --shutdown-timeout plus 5 s; compose's default grace is 10 s.
    assert int(match.group(1)) > timeout + 5
