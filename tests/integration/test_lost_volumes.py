"""A member whose mail volume is lost gets a new one from the operator, never the master, on the real control plane.

The pair runs real agents and Dovecot at its KWOK pods' IPs (`pair`), so the
operator knows its master is serving, which is the condition for touching the
other member's volume at all. KWOK runs no containers, so what is proven here
is the Kubernetes side: which claim and pod are deleted, when, what the
StatefulSet and the scheduler make of it, and the Events; the re-seed of the
new, empty member is proven with real pods in the e2e tier.
"""

from __future__ import annotations

import time

import pytest
from kubernetes import client
from operator_support import eventually
from pair_support import GROUP, SHARD, VERSION, A, B, events

from mailshard_harness import local_agents

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("operator")]

CLAIM_B = f"mail-{B}-0"


def claim(core: client.CoreV1Api, namespace: str, name: str) -> client.V1PersistentVolumeClaim | None:
    try:
        found: client.V1PersistentVolumeClaim = core.read_namespaced_persistent_volume_claim(name, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return found


def replaced(core: client.CoreV1Api, namespace: str, old_uid: str) -> client.V1Pod | None:
    """B's pod, once it runs on a new claim bound to a volume."""
    found = claim(core, namespace, CLAIM_B)
    if found is None or found.metadata.uid == old_uid or found.status.phase != "Bound":
        return None
    pod: client.V1Pod = core.read_namespaced_pod(f"{B}-0", namespace)
    return pod if pod.spec.node_name and not pod.metadata.deletion_timestamp else None


def test_a_replica_whose_claim_was_deleted_is_recreated_on_a_new_claim(
    api_client: client.ApiClient, namespace: str, pair: local_agents.LocalPair
) -> None:
    core = client.CoreV1Api(api_client)
    old = claim(core, namespace, CLAIM_B)
    assert old is not None
    master_claim = claim(core, namespace, f"mail-{A}-0")
    assert master_claim is not None
    # The claim is deleted under the running replica: it stays Terminating as long as the pod uses it, and
    # the StatefulSet would never make a new one. The operator deletes the pod so that it does.
    core.delete_namespaced_persistent_volume_claim(CLAIM_B, namespace)
    pod = eventually(lambda: replaced(core, namespace, old.metadata.uid), timeout=60, what="B on a new claim")
    assert pod.spec.volumes[0].persistent_volume_claim.claim_name == CLAIM_B
    assert any(e.startswith("Warning/VolumeLost") for e in events(api_client, namespace)), events(api_client, namespace)
    # The master's volume is never touched.
    still = claim(core, namespace, f"mail-{A}-0")
    assert still is not None
    assert still.metadata.uid == master_claim.metadata.uid


def test_a_replica_whose_node_was_deleted_gets_a_volume_on_another_node(
    api_client: client.ApiClient, namespace: str, pair: local_agents.LocalPair
) -> None:
    """The machine is gone for good (its Node deleted, as a cloud controller or an admin does): no grace to wait.

    (A node that is only NotReady waits `failover.lostVolumeGraceSeconds` first; that rule is in the unit
    table, since a KWOK node keeps reporting Ready whatever its status is patched to.)
    """
    core = client.CoreV1Api(api_client)
    old = claim(core, namespace, CLAIM_B)
    assert old is not None
    lost_node = core.read_namespaced_pod(f"{B}-0", namespace).spec.node_name
    assert lost_node
    saved = api_client.sanitize_for_serialization(core.read_node(lost_node))
    pair.members[B].kill()  # the agent went with its machine
    core.delete_node(lost_node)
    try:
        pod = eventually(lambda: replaced(core, namespace, old.metadata.uid), timeout=90, what="B on a new volume")
        assert pod.spec.node_name != lost_node
        found = claim(core, namespace, CLAIM_B)
        assert found is not None
        volume = core.read_persistent_volume(found.spec.volume_name)
        terms = volume.spec.node_affinity.required.node_selector_terms
        assert terms[0].match_expressions[0].values != [lost_node]
        reasons = events(api_client, namespace)
        assert any(e.startswith("Warning/VolumeReplaced") for e in reasons), reasons
        shard = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "mailshards", SHARD
        )
        assert shard["status"]["master"] == A
    finally:
        # The next tests want their three nodes: the same Node again, which KWOK runs again.
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {k: saved["metadata"][k] for k in ("name", "labels", "annotations")},
            "spec": {k: v for k, v in saved["spec"].items() if k != "taints"},
        }
        core.create_node(body)
        eventually(
            lambda: any(
                c.type == "Ready" and c.status == "True" for c in core.read_node(lost_node).status.conditions or []
            ),
            timeout=60,
            what=f"{lost_node} back and Ready",
        )


def test_a_master_whose_claim_is_deleted_is_failed_over_first_and_only_then_given_a_new_one(
    api_client: client.ApiClient, namespace: str, pair: local_agents.LocalPair
) -> None:
    core = client.CoreV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    old = claim(core, namespace, f"mail-{A}-0")
    assert old is not None
    # The claim is only marked for deletion while the master's pod uses it: the master keeps serving, and the
    # operator must not touch it, however long that lasts.
    core.delete_namespaced_persistent_volume_claim(f"mail-{A}-0", namespace)
    pod_uid = core.read_namespaced_pod(f"{A}-0", namespace).metadata.uid
    still = eventually(
        lambda: (c := claim(core, namespace, f"mail-{A}-0")) is not None and c.metadata.deletion_timestamp and c,
        what="A's claim terminating",
    )
    assert still.metadata.uid == old.metadata.uid
    time.sleep(10)  # three resyncs (3 s each in this tier) while the master's claim is terminating
    assert core.read_namespaced_pod(f"{A}-0", namespace).metadata.uid == pod_uid
    assert not any("VolumeLost" in e for e in events(api_client, namespace))

    pair.members[A].kill()  # then the master dies: the failover comes first
    eventually(
        lambda: (
            (
                custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "mailshards", SHARD)["status"].get(
                    "lastFailover"
                )
                or {}
            ).get("from")
            == A
        ),
        timeout=60,
        what="the failover away from A",
    )

    def new_claim_for_a() -> client.V1PersistentVolumeClaim | None:
        found = claim(core, namespace, f"mail-{A}-0")
        return found if found is not None and found.metadata.uid != old.metadata.uid else None

    eventually(new_claim_for_a, timeout=90, what="A on a new claim")
    shard = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "mailshards", SHARD)
    assert shard["status"]["master"] == B
    reasons = events(api_client, namespace)
    assert any(e.startswith("Warning/VolumeLost") for e in reasons), reasons
