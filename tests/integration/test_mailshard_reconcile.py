"""The operator, running for real, reconciles MailShards into master/replica pairs, level-based and write-free."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from operator_support import OPERATOR_USER, REPO, AuditLog, OperatorProcess, eventually, kubectl

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("operator")]

GROUP, VERSION = "mailshard.io", "v1alpha1"


def shard(api_client: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "mailshards", name
    )
    return result


def condition(body: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in (body.get("status") or {}).get("conditions", []) if c["type"] == kind), None)


def is_ready(api_client: client.ApiClient, namespace: str, name: str) -> bool:
    ready = condition(shard(api_client, namespace, name), "Ready")
    return ready is not None and ready["status"] == "True"


def apply_examples(kubeconfig: Path, namespace: str) -> None:
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(REPO / "examples"))


def wait_ready(api_client: client.ApiClient, namespace: str, *names: str) -> None:
    for name in names:
        eventually(lambda name=name: is_ready(api_client, namespace, name), what=f"MailShard {name} Ready")


def events_for(api_client: client.ApiClient, namespace: str, name: str) -> list[client.CoreV1Event]:
    events = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    return [e for e in events if e.involved_object.name == name]


def test_examples_become_ready_pairs_with_every_owned_object(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    apply_examples(kubeconfig, namespace)
    wait_ready(api_client, namespace, "dovecot-1", "cyrus-1")
    core, apps, policy = client.CoreV1Api(api_client), client.AppsV1Api(api_client), client.PolicyV1Api(api_client)
    for name, backend in (("dovecot-1", "dovecot"), ("cyrus-1", "cyrus")):
        body = shard(api_client, namespace, name)
        members = [f"{name}-a", f"{name}-b"]
        for member in members:
            statefulset = apps.read_namespaced_stateful_set(member, namespace)
            assert statefulset.spec.replicas == 1
            assert statefulset.metadata.owner_references[0].name == name
            assert statefulset.metadata.labels["app.kubernetes.io/managed-by"] == "mailshard-operator"
            assert core.read_namespaced_service(member, namespace).spec.cluster_ip == "None"
            claim = core.read_namespaced_persistent_volume_claim(f"mail-{member}-0", namespace)
            assert claim.status.phase == "Bound"
        master_service = core.read_namespaced_service(f"{name}-master", namespace)
        assert master_service.spec.selector == {"mailshard.io/shard": name, "mailshard.io/role": "master"}
        assert core.read_namespaced_config_map(f"{name}-config", namespace).data["shard.json"]
        secret = core.read_namespaced_secret(f"{name}-replication", namespace)
        assert set(secret.data) == {"replication-password", "agent-token"}
        assert policy.read_namespaced_pod_disruption_budget(name, namespace).spec.max_unavailable == 1

        pods = core.list_namespaced_pod(namespace, label_selector=f"mailshard.io/shard={name}").items
        assert len({p.spec.node_name for p in pods}) == 2, "the two members share a node"
        roles = {p.metadata.labels["mailshard.io/member"]: p.metadata.labels["mailshard.io/role"] for p in pods}
        assert roles == {members[0]: "master", members[1]: "replica"}
        status = body["status"]
        assert (status["phase"], status["master"], status["replica"]) == ("Healthy", members[0], members[1])
        assert status["observedGeneration"] == body["metadata"]["generation"]
        assert {c["type"]: c["status"] for c in status["conditions"]} == {
            "Ready": "True",
            "Replicating": "Unknown",  # no agent reports lag on KWOK nodes
            "Degraded": "False",
            "FailingOver": "False",
            "Reconciling": "False",
            "Stalled": "False",
        }
        assert body["spec"]["backend"] == backend
        assert "Created" in {e.reason for e in events_for(api_client, namespace, name)}

    table = kubectl(kubeconfig, "get", "ms", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "BACKEND", "MASTER", "REPLICA", "LAG", "PHASE", "AGE"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["dovecot-1"][1:4] == ["dovecot", "dovecot-1-a", "dovecot-1-b"]
    assert rows["cyrus-1"][4] == "Healthy"  # LAG is empty until an agent reports it
    clusters = kubectl(kubeconfig, "get", "mc", "demo", "-n", namespace).stdout.splitlines()
    assert clusters[0].split() == ["NAME", "SHARDS", "READY", "PROXIES", "ROUTING-VERSION", "AGE"]
    assert clusters[1].split()[1:3] == ["2", "2"]


def stalled_reason(api_client: client.ApiClient, namespace: str, name: str) -> str | None:
    shard = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        "mailshard.io", "v1alpha1", namespace, "mailshards", name
    )
    conditions = (shard.get("status") or {}).get("conditions") or []
    return next((c["reason"] for c in conditions if c["type"] == "Stalled" and c["status"] == "True"), None)


def settle_writes(audit: AuditLog, namespace: str, operator: OperatorProcess, timeout: float = 90) -> None:
    """Until one resync passes without an operator write: the last status writes of a pair coming up (users
    distributed, proxies ready, conditions settling) may run late on a loaded machine. A write that recurs at
    every resync never settles, so the test below still catches it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mark = audit.mark()
        time.sleep(operator.resync_seconds + 1)
        if not audit.writes(user=OPERATOR_USER, namespace=namespace, since=mark):
            return
    raise AssertionError(f"the operator kept writing for {timeout:.0f} s after the shards were Ready")


def test_an_unchanged_shard_and_an_operator_restart_cause_no_writes(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str, operator: OperatorProcess, audit: AuditLog
) -> None:
    apply_examples(kubeconfig, namespace)
    wait_ready(api_client, namespace, "dovecot-1", "cyrus-1")
    # KWOK pods run no agents, so each shard is UNCERTAIN until, 30 s on, its failover monitor calls a human
    # (Stalled, reason Uncertain): a real change, and the state such a shard then keeps. Unchanged means after it.
    for name in ("dovecot-1", "cyrus-1"):
        eventually(
            lambda name=name: stalled_reason(api_client, namespace, name) == "Uncertain",
            timeout=120,
            what=f"{name}'s silent agents reported as Uncertain",
        )
    settle_writes(audit, namespace, operator)
    mark = audit.mark()
    time.sleep(3 * operator.resync_seconds + 1)  # several resyncs of every shard
    assert audit.writes(user=OPERATOR_USER, namespace=namespace, since=mark) == []

    operator.stop()
    mark = audit.mark()
    operator.start()
    time.sleep(3 * operator.resync_seconds + 3)  # resume handlers, then resyncs
    operator.assert_running()
    after_restart = audit.writes(user=OPERATOR_USER, namespace=namespace, since=mark)
    assert after_restart == [], after_restart


def test_manual_edits_are_reverted_and_deleted_objects_recreated(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    apply_examples(kubeconfig, namespace)
    wait_ready(api_client, namespace, "dovecot-1")
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)

    core.patch_namespaced_service(
        "dovecot-1-master", namespace, {"spec": {"selector": {"mailshard.io/role": "replica"}}}
    )
    apps.patch_namespaced_stateful_set(
        "dovecot-1-b",
        namespace,
        {"spec": {"template": {"spec": {"containers": [{"name": "mail", "image": "evil/dovecot:latest"}]}}}},
    )
    core.delete_namespaced_config_map("dovecot-1-config", namespace)
    core.delete_namespaced_service("dovecot-1-a", namespace)

    eventually(
        lambda: (
            core.read_namespaced_service("dovecot-1-master", namespace).spec.selector["mailshard.io/role"] == "master"
        ),
        what="the master Service selector reverted",
    )
    eventually(
        lambda: (
            apps.read_namespaced_stateful_set("dovecot-1-b", namespace).spec.template.spec.containers[0].image
            == "mailshard/dovecot:0.1.0"
        ),
        what="the StatefulSet image reverted",
    )
    eventually(lambda: core.read_namespaced_config_map("dovecot-1-config", namespace), what="ConfigMap recreated")
    eventually(lambda: core.read_namespaced_service("dovecot-1-a", namespace), what="member Service recreated")
    # The Event follows the revert within the same reconcile, so it may land a moment after the objects do.
    eventually(
        lambda: "DriftReverted" in {e.reason for e in events_for(api_client, namespace, "dovecot-1")},
        what="a DriftReverted Event",
    )


def test_a_spec_change_is_announced_as_an_update_not_as_drift(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    """A change the operator wants (here the spec's capacity, in shard.json) is `Updated`; only edits by someone
    else are `DriftReverted` (before, every change of a child was announced as a reverted manual change)."""
    apply_examples(kubeconfig, namespace)
    wait_ready(api_client, namespace, "dovecot-1")
    core = client.CoreV1Api(api_client)
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "mailshards", "dovecot-1", {"spec": {"capacity": {"mailboxes": 1500}}}
    )

    def capacity() -> int:
        config_map = core.read_namespaced_config_map("dovecot-1-config", namespace)
        return int(json.loads(config_map.data["shard.json"])["mailboxes"])

    eventually(lambda: capacity() == 1500, what="shard.json with the new capacity")
    updated = eventually(
        lambda: [e for e in events_for(api_client, namespace, "dovecot-1") if e.reason == "Updated"],
        what="an Updated Event",
    )
    assert any("ConfigMap/dovecot-1-config" in event.message for event in updated), [e.message for e in updated]
    reasons = {e.reason for e in events_for(api_client, namespace, "dovecot-1")}
    assert "DriftReverted" not in reasons, reasons


def test_deletion_keeps_or_deletes_volumes_per_reclaim_policy(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    apply_examples(kubeconfig, namespace)
    disposable = yaml.safe_load((REPO / "examples" / "mailshard-dovecot.yaml").read_text())
    disposable["metadata"]["name"] = "scratch-1"
    disposable["spec"]["storage"]["reclaimPolicy"] = "Delete"
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(disposable))
    wait_ready(api_client, namespace, "dovecot-1", "scratch-1")
    core = client.CoreV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)

    for name in ("dovecot-1", "scratch-1"):
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "mailshards", name)

    def gone(name: str) -> bool:
        try:
            shard(api_client, namespace, name)
        except client.ApiException as exc:
            return exc.status == 404
        return False

    for name in ("dovecot-1", "scratch-1"):
        eventually(lambda name=name: gone(name), what=f"{name} deleted")
    eventually(
        lambda: (
            not core.list_namespaced_persistent_volume_claim(
                namespace, field_selector="metadata.name=mail-scratch-1-a-0"
            ).items
        ),
        what="the Delete-policy shard's volumes deleted",
    )
    kept = {c.metadata.name for c in core.list_namespaced_persistent_volume_claim(namespace).items}
    assert {"mail-dovecot-1-a-0", "mail-dovecot-1-b-0"} <= kept
    assert not {"mail-scratch-1-a-0", "mail-scratch-1-b-0"} & kept
    assert "VolumesRetained" in {e.reason for e in events_for(api_client, namespace, "dovecot-1")}
    assert "VolumesDeleted" in {e.reason for e in events_for(api_client, namespace, "scratch-1")}


def test_specs_that_cannot_be_acted_on_stall_only_their_own_shard(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    apply_examples(kubeconfig, namespace)
    example = yaml.safe_load((REPO / "examples" / "mailshard-dovecot.yaml").read_text())
    orphan = {**example, "metadata": {"name": "orphan-1"}, "spec": {**example["spec"]}}
    del orphan["spec"]["clusterRef"]
    lost = {**example, "metadata": {"name": "lost-1"}, "spec": {**example["spec"]}}
    lost["spec"]["storage"] = {**example["spec"]["storage"], "storageClassName": "no-such-class"}
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all([orphan, lost]))

    wait_ready(api_client, namespace, "dovecot-1", "cyrus-1")
    for name, reason, field in (
        ("orphan-1", "ClusterRefMissing", "spec.clusterRef"),
        ("lost-1", "StorageClassNotFound", "spec.storage.storageClassName"),
    ):
        stalled = eventually(
            lambda name=name: (
                (c := condition(shard(api_client, namespace, name), "Stalled")) and c["status"] == "True" and c
            ),
            what=f"{name} Stalled",
        )
        assert stalled["reason"] == reason
        assert field in stalled["message"]
        body = shard(api_client, namespace, name)
        assert body["status"]["phase"] == "Failed"
        assert condition(body, "Ready")["status"] == "False"  # type: ignore[index]
        warnings = [e for e in events_for(api_client, namespace, name) if e.type == "Warning"]
        assert reason in {e.reason for e in warnings}
    assert (
        not client.AppsV1Api(api_client)
        .list_namespaced_stateful_set(namespace, label_selector="mailshard.io/shard in (orphan-1,lost-1)")
        .items
    )
