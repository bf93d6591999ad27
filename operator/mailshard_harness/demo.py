"""`make demo`: a control plane, the operator, and the example shards, Ready, in one command.

Without KUBECONFIG it starts (or reuses) the local harness instance `demo`
and runs the operator as a process the instance owns, so `make cluster-down
NAME=demo` stops everything. With KUBECONFIG set it uses that cluster's
current context instead, and the operator runs on this machine in the
background, recorded in `<cache>/run/demo-operator/` (stop it with
`make cluster-down NAME=demo-operator`).

Until the Helm chart lands the operator runs on the host, not in a pod; the
KWOK nodes run no containers, so the demo shows the control plane's side
(pairs, volumes, Services, status) rather than mail flowing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config

from mailshard_harness import build, processes, versions
from mailshard_harness.cluster import ClusterConfig, ClusterState, ControlPlane, runs_root
from mailshard_harness.errors import HarnessError
from mailshard_harness.identity import install_operator_identity

DEMO_NAMESPACE = "demo"
INSTANCE = "demo"
_READY_TIMEOUT = 120.0


def _repo() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "examples").is_dir() and (parent / "crds").is_dir():
            return parent
    raise HarnessError("cannot find the repository's examples/ and crds/ (run `make demo` from a checkout)")


def _kubectl(kubeconfig: Path, *args: str) -> str:
    result = subprocess.run(
        [str(build.bin_path(versions.KUBECTL_BINARY)), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise HarnessError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def _control_plane() -> tuple[Path, ControlPlane | None]:
    given = os.environ.get("KUBECONFIG")
    if given:
        _say(f"using the current context of KUBECONFIG={given}")
        return Path(given), None
    directory = runs_root() / INSTANCE
    state = ClusterState.load(directory)
    if state is not None and state.running() and state.owner_alive():
        _say(f"reusing the running control plane {INSTANCE}")
        return state.kubeconfig, ControlPlane(state)
    plane = ControlPlane.start(ClusterConfig(name=INSTANCE))
    return plane.kubeconfig, plane


def _start_operator(kubeconfig: Path, plane: ControlPlane | None, api: client.ApiClient) -> None:
    directory = plane.directory if plane is not None else runs_root() / "demo-operator"
    directory.mkdir(parents=True, exist_ok=True)
    identity = install_operator_identity(api, kubeconfig, directory)
    state = plane.state if plane is not None else ClusterState.load(directory) or ClusterState(directory=directory)
    for record in state.processes:
        if record.name == "operator" and processes.is_ours(record, str(directory)):
            _say(f"the operator is already running (pid {record.pid})")
            return
    log = directory / "logs" / "operator.log"
    _, record = processes.spawn(
        "operator",
        [sys.executable, "-m", "mailshard", "run", "--standalone", "--liveness", "", f"--kubeconfig={identity}"],
        log=log,
    )
    state.processes = [p for p in state.processes if p.name != "operator"] + [record]
    state.save()
    _say(f"operator started (pid {record.pid}, log {log})")


def _wait_ready(api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + _READY_TIMEOUT
    pending: list[str] = []
    while time.monotonic() < deadline:
        pending = []
        for plural in ("mailshards", "mailclusters"):
            items: list[dict[str, Any]] = custom.list_namespaced_custom_object(
                "mailshard.io", "v1alpha1", DEMO_NAMESPACE, plural
            )["items"]
            for item in items:
                conditions = (item.get("status") or {}).get("conditions") or []
                if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                    pending.append(f"{item['kind']}/{item['metadata']['name']}")
        if not pending:
            return
        time.sleep(0.5)
    raise HarnessError(f"not Ready after {_READY_TIMEOUT:.0f} s: {', '.join(pending)}")


def run_demo() -> int:
    repo = _repo()
    started = time.monotonic()
    kubeconfig, plane = _control_plane()
    api = config.new_client_from_config(config_file=str(kubeconfig))
    _kubectl(kubeconfig, "apply", "--server-side", "-f", str(repo / "crds"))
    _kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", "crd/mailshards.mailshard.io")
    _kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", "crd/mailclusters.mailshard.io")
    namespaces = json.loads(_kubectl(kubeconfig, "get", "namespaces", "-o", "json"))["items"]
    if DEMO_NAMESPACE not in {n["metadata"]["name"] for n in namespaces}:
        _kubectl(kubeconfig, "create", "namespace", DEMO_NAMESPACE)
    _start_operator(kubeconfig, plane, api)
    _kubectl(kubeconfig, "apply", "-n", DEMO_NAMESPACE, "-f", str(repo / "examples"))
    _wait_ready(api)
    _say(f"all example shards Ready {time.monotonic() - started:.1f} s after start")
    print(_kubectl(kubeconfig, "get", "ms,mc", "-n", DEMO_NAMESPACE))
    print(_kubectl(kubeconfig, "get", "statefulsets,services,pvc,pods", "-n", DEMO_NAMESPACE, "-o", "wide"))
    print(f"export KUBECONFIG={kubeconfig}")
    kubectl_path = build.bin_path(versions.KUBECTL_BINARY)
    print(f"kubectl: {kubectl_path}")
    if plane is not None:
        print("stop it with: make cluster-down NAME=demo")
    return 0
