"""The Helm chart (helm/tidings): it lints, renders valid manifests, passes a policy scan, refuses bad
values with a message, and wires what the relay and the workers need.

Rendering runs the real helm; validation uses the Kubernetes schemas of kubernetes-validate, and the
CRDs of KEDA and the Prometheus operator for their resources; the policy scan is kube-score.
"""

from __future__ import annotations

import copy
import functools
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy import tools
from tests.deploy.cli_contract import run_tidings, variables_read_by
from workers.cli_options import KAFKA_ENV_PREFIX, kafka_settings
from workers.overrides import COMMAND_LINE_OPTIONS, parse_overrides

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tidings"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
"""The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and the newest known."""

Manifest = dict[str, Any]


# --- rendering --------------------------------------------------------------------------------------


def helm(*args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tools.helm(), *args, str(chart)], capture_output=True, text=True, timeout=120, check=False
    )


def render(*args: str, chart: Path = CHART) -> list[Manifest]:
    result = helm("template", "rel", *args, chart=chart)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def rendered(name: str) -> tuple[Manifest, ...]:
    return tuple(render(*(["-f", str(FULL_VALUES)] if name == "full" else [])))


def find(manifests: tuple[Manifest, ...] | list[Manifest], kind: str, name: str | None = None) -> Manifest:
    matches = [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]
    assert len(matches) == 1, (
        f"expected one {kind} {name or ''}, found {[m['metadata']['name'] for m in matches]}"
    )
    return matches[0]


def all_of(manifests: tuple[Manifest, ...], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def containers(manifest: Manifest) -> list[dict[str, Any]]:
    return list(pod_spec(manifest)["containers"])


def pod_spec(manifest: Manifest) -> dict[str, Any]:
    if manifest["kind"] == "Pod":
        return dict(manifest["spec"])
    return dict(manifest["spec"]["template"]["spec"])


def full_values() -> dict[str, Any]:
    return dict(yaml.safe_load(FULL_VALUES.read_text()))


# --- lint and schema validation --------------------------------------------------------------------


@pytest.mark.parametrize("values", ["default", "full"])
def test_the_chart_lints_strictly(values: str) -> None:
    result = helm("lint", "--strict", *(["-f", str(FULL_VALUES)] if values == "full" else []))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", ["default", "full"])
@pytest.mark.parametrize("kubernetes", KUBERNETES_VERSIONS)
def test_every_rendered_manifest_is_valid_kubernetes(values: str, kubernetes: str) -> None:
    manifests = rendered(values)
    assert manifests
    for manifest in manifests:
        what = f"{manifest['kind']} {manifest['metadata']['name']}"
        try:
            kubernetes_validate.validate(manifest, kubernetes, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            validate_custom_resource(manifest)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{what} is not valid Kubernetes {kubernetes}: {error.message} at {error.path}")


def test_strict_validation_refuses_a_misspelt_field() -> None:
    relay = copy.deepcopy(find(rendered("default"), "Deployment", "rel-tidings-relay"))
    relay["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(relay, KUBERNETES_VERSIONS[-1], strict=True)


def test_custom_resources_are_rendered_and_validated_against_their_crds() -> None:
    kinds = {(m["apiVersion"], m["kind"]) for m in rendered("full")}
    assert {
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("keda.sh/v1alpha1", "TriggerAuthentication"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
    } <= kinds
    # The CRD check is strict too: a misspelt field fails it.
    scaled = copy.deepcopy(find(rendered("full"), "ScaledObject"))
    scaled["spec"]["minReplicas"] = 1
    with pytest.raises(jsonschema.ValidationError, match="minReplicas"):
        validate_custom_resource(scaled)


def validate_custom_resource(manifest: Manifest) -> None:
    key = f"{manifest['apiVersion']}/{manifest['kind']}"
    assert key in tools.CRDS, f"{key} has neither a Kubernetes schema nor a known CRD"
    jsonschema.validate(manifest, crd_schema(key))


@functools.cache
def crd_schema(key: str) -> dict[str, Any]:
    """The openAPIV3Schema of a CRD's served version, made strict (unknown fields refused) as the API
    server's field validation is."""
    (module, path) = tools.CRDS[key]
    crd = yaml.safe_load((tools.go_module(*module) / path).read_text())
    version = key.split("/")[1]
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = copy.deepcopy(served["schema"]["openAPIV3Schema"])
    for node in _objects(schema):
        if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node.setdefault("additionalProperties", False)
    schema["properties"]["metadata"] = {"type": "object"}
    return dict(schema)


def _objects(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value)


# --- policy scan ----------------------------------------------------------------------------------


@pytest.mark.parametrize("values", ["default", "full"])
def test_the_policy_scan_finds_nothing_critical(values: str, tmp_path: Path) -> None:
    report = kube_score(list(rendered(values)), tmp_path)
    scored = {item["object_meta"]["name"] + "/" + item["type_meta"]["kind"] for item in report}
    assert len(scored) >= 6, scored  # the scan saw the workloads, not an empty file
    critical = [
        f"{item['type_meta']['kind']} {item['object_meta']['name']}: {check['check']['name']}: "
        + "; ".join(comment.get("summary", "") for comment in check.get("comments") or [])
        for item in report
        for check in item["checks"]
        if not check.get("skipped") and check["grade"] == 1
    ]
    assert critical == []


def test_the_policy_scan_would_flag_a_container_running_as_root(tmp_path: Path) -> None:
    """The scan's verdict above means something: the same chart with a root container fails it."""
    relay = copy.deepcopy(find(rendered("default"), "Deployment", "rel-tidings-relay"))
    relay["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {"runAsUser": 0}
    grades = {c["check"]["id"]: c["grade"] for c in kube_score([relay], tmp_path)[0]["checks"]}
    assert grades["container-security-context-user-group-id"] == 1


def kube_score(manifests: list[Manifest], tmp_path: Path) -> list[dict[str, Any]]:
    """kube-score's JSON report on ``manifests`` (it exits 1 when it finds something critical)."""
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(manifests))
    result = subprocess.run(
        [tools.kube_score(), "score", "--output-format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout.startswith("["), result.stderr
    return list(json.loads(result.stdout))


# --- values.schema.json -------------------------------------------------------------------------


BAD_VALUES = {
    "relay.replicas=0": "at '/relay/replicas': minimum: got 0, want 1",
    "kafka.securityProtocol=TLS": "value must be one of 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT', 'SASL_SSL'",
    "replica=2": "additional properties 'replica' not allowed",
    "relay.replica=2": "additional properties 'replica' not allowed",
    "workers[0].name=Bad_Name,workers[0].app=m:a": "at '/workers/0/name': 'Bad_Name' does not match pattern",
    "workers[0].name=projections": "at '/workers/0': missing property 'app'",
    "workers[0].name=p,workers[0].app=no-colon": "at '/workers/0/app': 'no-colon' does not match pattern",
    "image.digest=latest": "at '/image/digest': 'latest' does not match pattern",
    "database.existingSecret=": "at '/database/existingSecret': minLength: got 0, want 1",
    "kafka.config.sasl\\.password=x": "invalid propertyName 'sasl.password'",
    "kafka.config.linger_ms=5": "invalid propertyName 'linger_ms'",
    "kafka.securityProtocol=SASL_SSL": "at '/kafka/sasl/existingSecret': minLength: got 0, want 1",
    "relay.partitions=0": "at '/relay/partitions': minimum: got 0, want 1",
    "store.schema=Bank; DROP": "at '/store/schema': 'Bank; DROP' does not match pattern",
    "kafka.bootstrapServers=a b": "at '/kafka/bootstrapServers'",
    "logLevel=loud": "at '/logLevel': value must be one of",
    "workers[0].name=p,workers[0].app=m:a,workers[0].handlerOptions.h.concurency=2": (
        "invalid propertyName 'concurency'"
    ),
}


@pytest.mark.parametrize(("values", "message"), BAD_VALUES.items(), ids=list(BAD_VALUES))
def test_values_the_schema_refuses_say_where_and_why(values: str, message: str) -> None:
    result = helm("template", "rel", "--set", values)
    assert result.returncode == 1
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr, result.stderr


TEMPLATE_REFUSALS = {
    "both autoscalers": (
        "workers[0].name=p,workers[0].app=m:a,workers[0].handlers={h},"
        "workers[0].autoscaling.enabled=true,workers[0].keda.enabled=true",
        "workers[p]: autoscaling and keda are both enabled",
    ),
    "keda without handlers": (
        "workers[0].name=p,workers[0].app=m:a,workers[0].keda.enabled=true",
        "workers[p]: keda needs the group's handlers listed",
    ),
    "duplicate groups": (
        "workers[0].name=p,workers[0].app=m:a,workers[1].name=p,workers[1].app=m:b",
        'the name "p" is used twice',
    ),
    "options for a handler the group does not run": (
        "workers[0].name=p,workers[0].app=m:a,workers[0].handlers={h},workers[0].handlerOptions.g.concurrency=2",
        'workers[p].handlerOptions names "g", which the group does not run (its handlers: h)',
    ),
    "service monitor without services": (
        "serviceMonitor.enabled=true,service.enabled=false",
        "serviceMonitor.enabled needs service.enabled",
    ),
}


@pytest.mark.parametrize(("values", "message"), TEMPLATE_REFUSALS.values(), ids=list(TEMPLATE_REFUSALS))
def test_combinations_that_cannot_work_are_refused_with_what_to_change(values: str, message: str) -> None:
    result = helm("template", "rel", "--set", values)
    assert result.returncode == 1
    assert message in result.stderr, result.stderr


def test_the_schema_accepts_the_defaults_and_the_full_example() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)
    jsonschema.validate(full_values(), schema)


# --- wiring ----------------------------------------------------------------------------------------


def test_the_relay_runs_two_replicas_probed_on_the_port_it_serves() -> None:
    relay = find(rendered("default"), "Deployment", "rel-tidings-relay")
    assert relay["spec"]["replicas"] == 2
    (container,) = containers(relay)
    args = container["args"]
    assert args[0] == "relay"
    port = int(args[args.index("--port") + 1])
    assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # A disruption may take one relay at a time, never both.
    pdb = find(rendered("default"), "PodDisruptionBudget", "rel-tidings-relay")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels(relay).items()


def test_each_worker_group_is_a_deployment_running_its_handlers() -> None:
    manifests = rendered("full")
    for group in full_values()["workers"]:
        deployment = find(manifests, "Deployment", f"rel-tidings-worker-{group['name']}")
        (container,) = containers(deployment)
        args = container["args"]
        assert args[:2] == ["worker", group["app"]]
        handlers = [args[i + 1] for i, arg in enumerate(args) if arg == "--handler"]
        assert handlers == group["handlers"]
        port = int(args[args.index("--port") + 1])
        assert {"name": "http", "containerPort": port, "protocol": "TCP"} in container["ports"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        # The grace period covers the worker's own shutdown timeout.
        shutdown = float(args[args.index("--shutdown-timeout") + 1])
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] > shutdown
        service = find(manifests, "Service", deployment["metadata"]["name"])
        assert service["spec"]["selector"].items() <= pod_labels(deployment).items()
        assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_handler_options_reach_the_worker_as_set_pairs_it_reads() -> None:
    manifests = render(
        "--set",
        "workers[0].name=p,workers[0].app=m:a,workers[0].handlers={bank.emails},"
        "workers[0].handlerOptions.bank\\.emails.start_from=1234567,"
        "workers[0].handlerOptions.bank\\.emails.static_membership=true,"
        "workers[0].handlerOptions.bank\\.emails.ordering=null,"
        "workers[0].handlerOptions.bank\\.emails.on_poison=dead_letter",
    )
    args = containers(find(manifests, "Deployment", "rel-tidings-worker-p"))[0]["args"]
    pairs = [args[i + 1] for i, arg in enumerate(args) if arg == "--set"]
    # Whole numbers stay integers (Helm reads YAML numbers as floats); null is none.
    assert pairs == [
        "bank.emails.on_poison=dead_letter",
        "bank.emails.ordering=none",
        "bank.emails.start_from=1234567",
        "bank.emails.static_membership=true",
    ]
    assert parse_overrides(pairs) == {
        "bank.emails": {
            "on_poison": "dead_letter",
            "ordering": None,
            "start_from": 1234567,
            "static_membership": True,
        }
    }
    assert run_tidings(*args, "--help").returncode == 0
    # The schema offers exactly the options the worker takes.
    schema = json.loads((CHART / "values.schema.json").read_text())
    options = schema["definitions"]["handlerOptions"]["additionalProperties"]["propertyNames"]["enum"]
    assert options == list(COMMAND_LINE_OPTIONS)


def test_autoscalers_target_their_deployment_and_keda_reads_the_handlers_groups() -> None:
    manifests = rendered("full")
    hpa = find(manifests, "HorizontalPodAutoscaler")
    projections = find(manifests, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
    assert "replicas" not in projections["spec"]  # the autoscaler owns the count
    scaled = find(manifests, "ScaledObject")
    transfers = find(manifests, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    assert "replicas" not in transfers["spec"]
    args = containers(transfers)[0]["args"]
    handlers = [args[i + 1] for i, arg in enumerate(args) if arg == "--handler"]
    triggers = scaled["spec"]["triggers"]
    assert [t["metadata"]["consumerGroup"] for t in triggers] == handlers
    assert {t["metadata"]["topic"] for t in triggers} == {"bank.events"}
    assert {t["metadata"]["sasl"] for t in triggers} == {"scram_sha512"}
    auth = find(manifests, "TriggerAuthentication", triggers[0]["authenticationRef"]["name"])
    assert {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]} == {
        "username",
        "password",
        "ca",
        "cert",
        "key",
    }


def test_the_service_monitor_scrapes_every_components_service() -> None:
    manifests = rendered("full")
    monitor = find(manifests, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = all_of(manifests, "Service")
    assert len(services) == 3  # the relay and two worker groups
    for service in services:
        assert selector.items() <= service["metadata"]["labels"].items()
        assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}


@pytest.mark.parametrize("values", ["default", "full"])
def test_the_commands_exist_and_read_every_variable_the_chart_sets(values: str) -> None:
    manifests = rendered(values)
    config = set(find(manifests, "ConfigMap", "rel-tidings-config")["data"])
    user_given = {e["name"] for e in full_values()["env"]} | {
        e["name"] for w in full_values()["workers"] for e in w.get("env", [])
    }
    read_by_config_users: set[str] = set()
    for workload in [*all_of(manifests, "Deployment"), *all_of(manifests, "Job"), *all_of(manifests, "Pod")]:
        for container in containers(workload):
            args = container["args"]
            result = run_tidings(*args, "--help")
            assert result.returncode == 0, f"{workload['metadata']['name']}: tidings {args}: {result.stderr}"
            read = variables_read_by(args)
            names = {entry["name"] for entry in container.get("env", [])}
            for name in sorted(names - user_given - {"POD_NAME"}):
                assert name in read or name.startswith(KAFKA_ENV_PREFIX), (
                    f"{workload['metadata']['name']} sets {name}, which `tidings {args[0]}` does not read"
                )
            assert "DATABASE_URL" in names
            if args[0] == "worker":
                assert "POD_NAME" in read  # the member's id, for handlers with static membership
            if any("configMapRef" in source for source in container.get("envFrom", [])):
                read_by_config_users |= read
    # The shared ConfigMap holds nothing that no command reads.
    unread = {name for name in config - read_by_config_users if not name.startswith(KAFKA_ENV_PREFIX)}
    assert unread == set()


def test_kafka_settings_reach_librdkafka_under_their_own_names() -> None:
    manifests = rendered("full")
    config = find(manifests, "ConfigMap", "rel-tidings-config")["data"]
    settings = kafka_settings(
        [], {**config, "TIDINGS_KAFKA_SASL_PASSWORD": "x", "TIDINGS_KAFKA_SASL_USERNAME": "u"}
    )
    assert settings["security.protocol"] == "SASL_SSL"
    assert settings["sasl.mechanism"] == "SCRAM-SHA-512"
    assert settings["linger.ms"] == "5"
    assert settings["client.rack"] == "eu-west-1a"
    # Each file setting points into the mounted TLS Secret.
    relay = find(manifests, "Deployment", "rel-tidings-relay")
    (mount,) = [m for m in containers(relay)[0]["volumeMounts"] if m["name"] == "kafka-tls"]
    tls = full_values()["kafka"]["tls"]
    assert settings["ssl.ca.location"] == f"{mount['mountPath']}/{tls['caKey']}"
    assert settings["ssl.certificate.location"] == f"{mount['mountPath']}/{tls['certKey']}"
    assert settings["ssl.key.location"] == f"{mount['mountPath']}/{tls['keyKey']}"
    # librdkafka knows every name (it refuses unknown properties when a client is made).
    from confluent_kafka import KafkaException, Producer

    Producer(
        {"bootstrap.servers": "127.0.0.1:1"}
        | {name: value for name, value in settings.items() if not name.endswith(".location")}
    )
    with pytest.raises(KafkaException, match="No such configuration property"):
        Producer({"bootstrap.servers": "127.0.0.1:1", "linger.millis": "5"})


def test_secrets_are_only_ever_referenced() -> None:
    for values in ("default", "full"):
        manifests = rendered(values)
        assert not all_of(manifests, "Secret")
        for workload in [
            *all_of(manifests, "Deployment"),
            *all_of(manifests, "Job"),
            *all_of(manifests, "Pod"),
        ]:
            env = {e["name"]: e for c in containers(workload) for e in c.get("env", [])}
            assert "secretKeyRef" in env["DATABASE_URL"]["valueFrom"]
            if values == "full" and "TIDINGS_KAFKA_SASL_PASSWORD" in env:
                assert (
                    env["TIDINGS_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"]
                    == "bank-kafka-user"
                )
        config = find(manifests, "ConfigMap", "rel-tidings-config")["data"]
        assert not any("PASSWORD" in name or "password" in value.lower() for name, value in config.items())


def test_migrations_run_first_and_need_nothing_the_chart_has_not_created_yet() -> None:
    manifests = rendered("full")
    job = find(manifests, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    (container,) = containers(job)
    assert container["args"] == ["migrate"]
    # Hooks run before the chart's ordinary resources exist: the Job may not use its ConfigMap or its
    # ServiceAccount, only the Secret the operator created beforehand.
    spec = pod_spec(job)
    assert "serviceAccountName" not in spec
    assert "envFrom" not in container
    assert not [v for v in spec["volumes"] if "configMap" in v]
    env = {e["name"]: e for e in container["env"]}
    assert env["TIDINGS_SCHEMA"]["value"] == "bank"
    # Every other workload is an ordinary resource, so it is created after the migrations succeed.
    for workload in all_of(manifests, "Deployment"):
        assert "helm.sh/hook" not in workload["metadata"].get("annotations", {})
    test_pod = find(manifests, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert containers(test_pod)[0]["args"] == ["health"]


@pytest.mark.parametrize("values", ["default", "full"])
def test_every_container_is_locked_down(values: str) -> None:
    for workload in [m for m in rendered(values) if m["kind"] in ("Deployment", "Job", "Pod")]:
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec.get("automountServiceAccountToken") is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # noqa: S108
            assert {"cpu", "memory"} <= set(container["resources"]["limits"])


def test_pods_roll_when_the_configuration_changes() -> None:
    before = find(render(), "Deployment", "rel-tidings-relay")
    after = find(render("--set", "kafka.config.linger\\.ms=50"), "Deployment", "rel-tidings-relay")
    annotation = "checksum/config"
    assert (
        before["spec"]["template"]["metadata"]["annotations"][annotation]
        != (after["spec"]["template"]["metadata"]["annotations"][annotation])
    )


def test_the_image_is_pinned_by_digest_when_one_is_given() -> None:
    values = full_values()["image"]
    for workload in [m for m in rendered("full") if m["kind"] in ("Deployment", "Job", "Pod")]:
        assert containers(workload)[0]["image"] == f"{values['repository']}@{values['digest']}"
    assert (
        containers(find(rendered("default"), "Deployment", "rel-tidings-relay"))[0]["image"]
        == "tidings:0.1.0"
    )


def test_the_notes_tell_the_operator_what_to_create_and_check(tmp_path: Path) -> None:
    # helm renders NOTES.txt only on a (dry-run) install, which wants a cluster: render it through tpl in
    # a copy of the chart instead.
    chart = tmp_path / "tidings"
    shutil.copytree(CHART, chart)
    (chart / "notes.txt").write_text((CHART / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n'
    )
    notes = find(render("-f", str(FULL_VALUES), chart=chart), "ConfigMap", "notes")["data"]["notes"]
    assert "kubectl create secret generic bank-database" in notes
    assert "bank-kafka-user (keys username, password)" in notes
    assert "kubectl logs -n default job/rel-tidings-migrate" in notes
    assert "deploy/rel-tidings-worker-transfers" in notes
    assert "helm test rel" in notes


def test_the_charts_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [key for key in _keys(values) if f"`{key}`" not in readme]
    assert missing == []


def _keys(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        path = f"{prefix}{key}"
        if (
            isinstance(value, dict)
            and value
            and key not in ("podSecurityContext", "securityContext", "resources")
        ):
            yield from _keys(value, f"{path}.")
        else:
            yield path


def pod_labels(workload: Manifest) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])
