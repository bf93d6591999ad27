"""The example Dovecot shard with real agents and real Dovecot in its KWOK pods' places, and how to read it.

Shared by the failover drills and by the tests of `kubectl mailshard
switchover`, which need a pair the operator really polls (lag reported, both
members answering) to switch over. The `mail_available` and `pair` fixtures in
conftest.py are built from `running_pair`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from operator_support import REPO, eventually, kubectl

from mailshard.api.routing import TABLE_KEY, parse_table
from mailshard_harness import local_agents

GROUP, VERSION = "mailshard.io", "v1alpha1"
SHARD = "dovecot-1"
A, B = f"{SHARD}-a", f"{SHARD}-b"
USERS = {f"user{n}@example.test": f"pw-{n}" for n in range(1, 6)}


def shard(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    body: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "mailshards", SHARD
    )
    return body


def status(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    return shard(api, namespace).get("status") or {}


def condition(api: client.ApiClient, namespace: str, kind: str) -> dict[str, Any]:
    return next((c for c in status(api, namespace).get("conditions", []) if c["type"] == kind), {})


def route(api: client.ApiClient, namespace: str) -> Any:
    config_map = client.CoreV1Api(api).read_namespaced_config_map("demo-routing", namespace)
    return parse_table((config_map.data or {})[TABLE_KEY]).shards[SHARD]


def events(api: client.ApiClient, namespace: str) -> list[str]:
    return [
        f"{e.type}/{e.reason}"
        for e in client.CoreV1Api(api).list_namespaced_event(namespace).items
        if e.involved_object.name == SHARD
    ]


def set_pod_ready(api: client.ApiClient, namespace: str, pod: str, *, ready: bool) -> None:
    """What the kubelet does to a pod whose readiness probe fails, or passes again (KWOK runs no probes)."""
    core = client.CoreV1Api(api)
    current = core.read_namespaced_pod_status(pod, namespace)
    conditions = []
    for item in current.status.conditions or []:
        if item.type in ("Ready", "ContainersReady"):
            item.status = "True" if ready else "False"
        conditions.append(api.sanitize_for_serialization(item))
    core.patch_namespaced_pod_status(pod, namespace, {"status": {"conditions": conditions}})


def apply_shard(kubeconfig: Path, namespace: str, *, failover_enabled: bool = True) -> None:
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(REPO / "examples" / "mailcluster.yaml"))
    manifest = (REPO / "examples" / "mailshard-dovecot.yaml").read_text()
    if not failover_enabled:
        manifest += "  failover:\n    enabled: false\n"
    path = Path(tempfile.mkdtemp()) / "shard.yaml"
    path.write_text(manifest)
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(path))


def require_mail() -> None:
    """Skip (fail in CI) unless Debian's Dovecot is installed here."""
    missing = [tool for tool in ("dovecot", "doveadm") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{', '.join(missing)} missing: CI must run .ci/install-mail-deps first")
        pytest.skip(f"{', '.join(missing)} not installed (run .ci/install-mail-deps)")


@contextlib.contextmanager
def running_pair(
    api_client: client.ApiClient,
    kubeconfig: Path,
    namespace: str,
    request: pytest.FixtureRequest,
    *,
    failover_enabled: bool = True,
) -> Iterator[local_agents.LocalPair]:
    """The example Dovecot shard with real agents in its pods' places, replicating, in sync."""
    apply_shard(kubeconfig, namespace, failover_enabled=failover_enabled)
    local_agents.wait_for_ips(api_client, namespace, (A, B))
    eventually(lambda: status(api_client, namespace).get("master"), what="a first master")
    root = Path(tempfile.mkdtemp(prefix="ms-f-"))
    started = local_agents.prepare_pair(api_client, namespace, SHARD, root, master=A, users=USERS)
    for member in started.members.values():
        member.start()
    try:
        eventually(
            lambda: (
                {m["name"]: m["role"] for m in status(api_client, namespace).get("members", [])}
                == {A: "master", B: "replica"}
            ),
            what="both agents polled and reporting their roles",
        )
        eventually(
            lambda: condition(api_client, namespace, "Replicating").get("status") == "True",
            what="the replica in sync",
        )
        yield started
    finally:
        started.stop()
        for member in started.members.values():
            request.node.add_report_section("teardown", f"agent {member.name} log", member.log_tail())
        local_agents.remove(root)
