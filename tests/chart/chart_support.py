"""Rendering the chart with the pinned Helm, and reading what it rendered."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mailshard_harness import build, versions

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mailshard-operator"
CRDS = REPO / "crds"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "ms-test"
NAMESPACE = "mail-ops"
FULLNAME = f"{RELEASE}-mailshard-operator"
KUBE_VERSION = versions.KUBERNETES_VERSION.removeprefix("v")
"""Our Helm is built without the Kubernetes version stamped in (it defaults to 1.20), so say it."""

Manifest = dict[str, Any]


def helm_binary() -> Path:
    path = build.bin_path(versions.HELM_BINARY)
    if not path.exists():
        pytest.skip(f"Helm {versions.HELM_VERSION} is not built: run `make build-k8s`")
    return path


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as home:
        env = {"HELM_CACHE_HOME": home, "HELM_CONFIG_HOME": home, "HELM_DATA_HOME": home, "PATH": "/usr/bin:/bin"}
        result = subprocess.run([str(helm_binary()), *args], capture_output=True, text=True, env=env, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def template_args(
    values: Manifest | None = None, *flags: str, release: str = RELEASE, values_file: Path | None = None
) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION, *flags]
    if values_file is not None:
        args += ["--values", str(values_file)]
    if values is not None:
        # One --set-json per top-level key: nested values replace the defaults' leaves, not whole maps.
        for key, value in values.items():
            args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def render(
    values: Manifest | None = None, *flags: str, release: str = RELEASE, values_file: Path | None = None
) -> list[Manifest]:
    """Every object `helm template` renders, in order."""
    out = helm(*template_args(values, *flags, release=release, values_file=values_file)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_error(values: Manifest | None = None, *flags: str) -> str:
    """The error `helm template` fails with; fails the test if it renders."""
    result = helm(*template_args(values, *flags), check=False)
    assert result.returncode != 0, "helm template accepted values it should reject"
    return result.stderr


def only(objects: Iterable[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def kinds(objects: Iterable[Manifest]) -> list[tuple[str, str]]:
    return sorted((o["kind"], o["metadata"]["name"]) for o in objects)


def operator_container(objects: Iterable[Manifest]) -> Manifest:
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    containers: list[Manifest] = pod["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return containers[0]
