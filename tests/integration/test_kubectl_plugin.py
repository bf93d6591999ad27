"""`kubectl mailshard` against the real control plane: status, route, fence/unfence, and clear refusals."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client
from operator_support import REPO, eventually, kubectl

from mailshard.api.routing import parse_table, route_user
from mailshard_harness import build, versions

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("operator")]


def plugin(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the plugin the way kubectl does: `kubectl mailshard …` finds `kubectl-mailshard` on PATH."""
    scripts = Path(sys.executable).parent
    assert shutil.which("kubectl-mailshard", path=str(scripts)), "the kubectl-mailshard entry point is not installed"
    env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}", "KUBECONFIG": str(kubeconfig)}
    return subprocess.run(
        [str(build.bin_path(versions.KUBECTL_BINARY)), "mailshard", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def routing_table(api_client: client.ApiClient, namespace: str) -> str | None:
    config_map = client.CoreV1Api(api_client).read_namespaced_config_map("demo-routing", namespace)
    return (config_map.data or {}).get("routing.json")


def shard_phase(api_client: client.ApiClient, namespace: str, name: str) -> str | None:
    body = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        "mailshard.io", "v1alpha1", namespace, "mailshards", name
    )
    return (body.get("status") or {}).get("phase")


def test_status_route_fence_and_unfence(api_client: client.ApiClient, kubeconfig: Path, namespace: str) -> None:
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(REPO / "examples"))
    eventually(lambda: shard_phase(api_client, namespace, "dovecot-1") == "Healthy", what="dovecot-1 Healthy")

    def fully_assigned() -> str | None:
        text = routing_table(api_client, namespace)
        return text if text and all(parse_table(text).slots) else None

    eventually(fully_assigned, what="a routing table with every slot assigned")
    eventually(lambda: shard_phase(api_client, namespace, "cyrus-1") == "Healthy", what="cyrus-1 Healthy")

    shown = plugin(kubeconfig, "status", "dovecot-1", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    assert "phase=Healthy" in shown.stdout
    assert "master: dovecot-1-a" in shown.stdout
    assert "dovecot-1-b" in shown.stdout
    assert "state=serving" in shown.stdout
    assert "last failover: never" in shown.stdout

    routed = plugin(kubeconfig, "route", "Alice@Example.org", "-n", namespace)
    table = parse_table(routing_table(api_client, namespace) or "")
    expected = route_user(table, "Alice@Example.org")
    assert routed.returncode == 0, routed.stderr
    assert f"slot: {expected.slot} of {table.slot_count}" in routed.stdout
    assert f"shard: {expected.shard}" in routed.stdout
    assert f"connect to: {expected.host}" in routed.stdout
    assert f"routing table version: {table.version}" in routed.stdout

    fenced = plugin(kubeconfig, "fence", "dovecot-1", "-n", namespace)
    assert fenced.returncode == 0, fenced.stderr
    eventually(lambda: shard_phase(api_client, namespace, "dovecot-1") == "Fenced", what="dovecot-1 Fenced")
    eventually(
        lambda: json.loads(routing_table(api_client, namespace) or "{}")["shards"]["dovecot-1"]["state"] == "fenced",
        what="the routing row fenced",
    )
    assert "state=fenced" in plugin(kubeconfig, "status", "dovecot-1", "-n", namespace).stdout

    assert plugin(kubeconfig, "unfence", "dovecot-1", "-n", namespace).returncode == 0
    eventually(lambda: shard_phase(api_client, namespace, "dovecot-1") == "Healthy", what="dovecot-1 Healthy again")
    eventually(
        lambda: json.loads(routing_table(api_client, namespace) or "{}")["shards"]["dovecot-1"]["state"] == "serving",
        what="the routing row serving again",
    )


def test_unknown_shard_and_missing_table_are_one_line_errors(kubeconfig: Path, namespace: str) -> None:
    missing = plugin(kubeconfig, "status", "no-such-shard", "-n", namespace)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"error: no MailShard 'no-such-shard' in namespace {namespace}"
    assert plugin(kubeconfig, "fence", "no-such-shard", "-n", namespace).returncode == 1
    no_cluster = plugin(kubeconfig, "route", "bob@example.org", "-n", namespace)
    assert no_cluster.returncode == 1
    assert "name the cluster with --cluster" in no_cluster.stderr
