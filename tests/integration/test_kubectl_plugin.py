"""`kubectl mailshard` against the real control plane: status, route, fence/unfence, switchover, clear refusals."""

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
from pair_support import SHARD, A, B, condition, events, status

from mailshard.api.routing import parse_table, route_user
from mailshard_harness import build, local_agents, versions

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


def shard_annotations(api_client: client.ApiClient, namespace: str, name: str) -> dict[str, str]:
    body = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        "mailshard.io", "v1alpha1", namespace, "mailshards", name
    )
    return dict(body["metadata"].get("annotations") or {})


def test_switchover_refusals_are_immediate_one_line_errors(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(REPO / "examples"))
    eventually(lambda: shard_phase(api_client, namespace, "dovecot-1") == "Healthy", what="dovecot-1 Healthy")
    refusals = {
        ("no-such-shard",): f"no MailShard 'no-such-shard' in namespace {namespace} (shards there: cyrus-1, dovecot-1)",
        ("dovecot-1", "--to", "cyrus-1-b"): "'cyrus-1-b' is not a member of dovecot-1 "
        "(its members are dovecot-1-a and dovecot-1-b)",
        ("dovecot-1", "--to", "dovecot-1-a"): "dovecot-1-a is already the master of dovecot-1",
        # KWOK runs no agents, so nobody reports the replica's lag: the operator would refuse, and so do we.
        ("dovecot-1",): "the replication lag of dovecot-1-b is unknown (its agent has not reported it), "
        "so the mail it lacks cannot be bounded",
    }
    for args, message in refusals.items():
        refused = plugin(kubeconfig, "switchover", *args, "-n", namespace)
        assert (refused.returncode, refused.stdout, refused.stderr) == (1, "", f"error: {message}\n"), args
    assert "mailshard.io/switchover-to" not in shard_annotations(api_client, namespace, "dovecot-1")

    assert plugin(kubeconfig, "fence", "dovecot-1", "-n", namespace).returncode == 0
    eventually(lambda: shard_phase(api_client, namespace, "dovecot-1") == "Fenced", what="dovecot-1 Fenced")
    fenced = plugin(kubeconfig, "switchover", "dovecot-1", "--wait", "-n", namespace)
    assert fenced.returncode == 1
    assert fenced.stderr.startswith("error: dovecot-1 is not Healthy (phase Fenced)"), fenced.stderr
    assert len(fenced.stderr.splitlines()) == 1
    assert "mailshard.io/switchover-to" not in shard_annotations(api_client, namespace, "dovecot-1")


def test_switchover_of_a_real_pair_is_requested_and_waited_for(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str, pair: local_agents.LocalPair
) -> None:
    """Real agents report the lag, so the checks pass; the operator acts on the annotation the command sets."""
    requested = plugin(kubeconfig, "switchover", SHARD, "-n", namespace)
    assert requested.returncode == 0, requested.stderr
    assert requested.stdout.startswith(f"switchover of {SHARD} from {A} to {B} requested"), requested.stdout
    done = eventually(
        lambda: (s := status(api_client, namespace)).get("master") == B and "failover" not in s and s,
        timeout=60,
        what="the operator switched over to the replica",
    )
    assert (done["lastFailover"]["from"], done["lastFailover"]["to"]) == (A, B)
    assert "Normal/SwitchoverCompleted" in events(api_client, namespace)
    eventually(
        lambda: (
            condition(api_client, namespace, "Replicating").get("status") == "True"
            and status(api_client, namespace).get("phase") == "Healthy"
        ),
        timeout=60,
        what="the pair in sync again, the old master now the replica",
    )

    back = plugin(kubeconfig, "switchover", SHARD, "--to", A, "--wait", "--timeout", "90", "-n", namespace)
    assert back.returncode == 0, back.stderr
    lines = back.stdout.splitlines()
    assert lines[0].startswith(f"switchover of {SHARD} from {B} to {A} requested"), back.stdout
    assert lines[-1].startswith(f"switched over: {A} is the master of {SHARD}"), back.stdout
    assert status(api_client, namespace)["master"] == A
    assert "mailshard.io/switchover-to" not in shard_annotations(api_client, namespace, SHARD)
