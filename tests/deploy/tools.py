"""The tools the deployment checks run, built or fetched once into the user's cache (never the repo).

- helm and kube-score are built with ``go install`` from the Go module proxy;
- the schemas of the custom resources the chart can render (KEDA's ScaledObject and
  TriggerAuthentication, the Prometheus operator's ServiceMonitor) and the Compose specification come
  from the Go modules that ship them (``go mod download``), at pinned versions;
- the Kubernetes schemas come from the PyPI package kubernetes-validate (a dev dependency).

A machine without Go fails these tests with a message saying what to install: a missing tool is never a
skip. ``TIDINGS_HELM`` / ``TIDINGS_KUBE_SCORE`` point at binaries of your own instead.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tidings.devservices.runs import cache_root

__all__ = ["COMPOSE_SPEC", "CRDS", "go_module", "helm", "kube_score"]

HELM = ("helm.sh/helm/v3/cmd/helm", "v3.22.0")
KUBE_SCORE = ("github.com/zegl/kube-score/cmd/kube-score", "v1.20.0")

KEDA = ("github.com/kedacore/keda/v2", "v2.21.0")
PROMETHEUS_OPERATOR = ("github.com/prometheus-operator/prometheus-operator", "v0.85.0")
COMPOSE_GO = ("github.com/compose-spec/compose-go/v2", "v2.16.2")

CRDS: dict[str, tuple[tuple[str, str], str]] = {
    "keda.sh/v1alpha1/ScaledObject": (KEDA, "config/crd/bases/keda.sh_scaledobjects.yaml"),
    "keda.sh/v1alpha1/TriggerAuthentication": (KEDA, "config/crd/bases/keda.sh_triggerauthentications.yaml"),
    "monitoring.coreos.com/v1/ServiceMonitor": (
        PROMETHEUS_OPERATOR,
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
    ),
}
"""apiVersion/kind -> (Go module, path of its CustomResourceDefinition in the module)."""

COMPOSE_SPEC = (COMPOSE_GO, "schema/compose-spec.json")


def _tools_dir() -> Path:
    return cache_root() / "tools"


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        pytest.fail(
            "the deployment checks need Go (1.24 or newer) to build helm and kube-score and to fetch "
            "schemas from the Go module proxy: install it (https://go.dev/dl/ or apt-get install "
            "golang), or set TIDINGS_HELM and TIDINGS_KUBE_SCORE to binaries you have",
            pytrace=False,
        )
    return go


def _go_env() -> dict[str, str]:
    tools = _tools_dir()
    return {
        **os.environ,
        "GOPATH": str(tools / "gopath"),
        "GOMODCACHE": str(tools / "gomod"),
        "GOCACHE": str(tools / "gobuild"),
        # Module caches are read-only by default, which makes them hard to clean; this keeps them normal.
        "GOFLAGS": "-modcacherw",
    }


def _run_go(*args: str) -> str:
    result = subprocess.run(
        [_go(), *args], env=_go_env(), capture_output=True, text=True, timeout=900, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"go {' '.join(args)} failed:\n{result.stderr[-4000:]}", pytrace=False)
    return result.stdout


def _installed(package: str, version: str, env_name: str) -> str:
    explicit = os.environ.get(env_name)
    if explicit:
        return explicit
    name = package.rsplit("/", 1)[-1]
    bin_dir = _tools_dir() / f"{name}-{version}"
    binary = bin_dir / name
    if not binary.exists():
        bin_dir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [_go(), "install", f"{package}@{version}"],
            env={**_go_env(), "GOBIN": str(bin_dir)},
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"go install {package}@{version} failed:\n{result.stderr[-4000:]}", pytrace=False)
    return str(binary)


@functools.cache
def helm() -> str:
    """The path of a helm binary (built on first use)."""
    return _installed(*HELM, "TIDINGS_HELM")


@functools.cache
def kube_score() -> str:
    """The path of a kube-score binary (built on first use)."""
    return _installed(*KUBE_SCORE, "TIDINGS_KUBE_SCORE")


@functools.cache
def go_module(module: str, version: str) -> Path:
    """The directory of ``module@version``'s source, downloaded from the Go module proxy once."""
    document = json.loads(_run_go("mod", "download", "-json", f"{module}@{version}"))
    if document.get("Error"):
        pytest.fail(f"cannot download {module}@{version}: {document['Error']}", pytrace=False)
    return Path(document["Dir"])
