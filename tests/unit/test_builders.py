"""What the golden files cannot say on their own: the invariants each builder promises."""

from __future__ import annotations

import base64
from typing import Any

import pydantic
import pytest
from unit_support import IMAGES, resolved_shard

from mailshard.api import ShardRuntimeConfig
from mailshard.api.constants import LABEL_ROLE, SHARD_CONFIG_KEY
from mailshard.builders import (
    BackendImages,
    ShardCredentials,
    build_config_map,
    build_master_service,
    build_member_service,
    build_member_statefulset,
    build_pod_disruption_budget,
    build_replication_secret,
    build_shard_manifests,
)
from mailshard.builders.affinity import member_anti_affinity_term

pytestmark = pytest.mark.unit


def pod_labels(statefulset: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = statefulset["spec"]["template"]["metadata"]["labels"]
    return labels


def test_roles_follow_the_master_input() -> None:
    shard = resolved_shard()
    first, second = shard.members
    for master, replica in ((first, second), (second, first)):
        manifests = build_shard_manifests(shard, master=master, images=IMAGES)
        roles = {pod_labels(sts)["mailshard.io/member"]: pod_labels(sts)[LABEL_ROLE] for sts in manifests.statefulsets}
        assert roles == {master: "master", replica: "replica"}


def test_a_failover_changes_only_the_role_label_of_the_templates() -> None:
    shard = resolved_shard()
    first, second = shard.members
    before = build_member_statefulset(shard, first, master=first, images=IMAGES)
    after = build_member_statefulset(shard, first, master=second, images=IMAGES)
    pod_labels(after)[LABEL_ROLE] = "master"
    assert before == after


def test_statefulset_selector_never_includes_the_role() -> None:
    """A StatefulSet's selector is immutable; roles change at every failover."""
    shard = resolved_shard()
    statefulset = build_member_statefulset(shard, shard.members[0], master=shard.members[0], images=IMAGES)
    assert LABEL_ROLE not in statefulset["spec"]["selector"]["matchLabels"]
    assert statefulset["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert statefulset["spec"]["replicas"] == 1


def test_master_service_selects_the_master_role_of_this_shard_only() -> None:
    service = build_master_service(resolved_shard("inbox-9"))
    assert service["metadata"]["name"] == "inbox-9-master"
    assert service["spec"]["selector"] == {"mailshard.io/shard": "inbox-9", LABEL_ROLE: "master"}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "imap": 143,
        "pop3": 110,
        "lmtp": 24,
        "managesieve": 4190,
        "agent": 8080,
    }


def test_member_services_are_headless_and_publish_unready_pods() -> None:
    shard = resolved_shard(replication={"port": 4000})
    for member in shard.members:
        service = build_member_service(shard, member)
        assert service["metadata"]["name"] == member
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["publishNotReadyAddresses"] is True
        assert {"name": "replication", "port": 4000, "targetPort": "replication", "protocol": "TCP"} in service["spec"][
            "ports"
        ]


def test_volume_claim_template_uses_the_resolved_storage() -> None:
    shard = resolved_shard(storage={"storageClassName": "mailshard-local", "size": "3Gi", "reclaimPolicy": "Delete"})
    statefulset = build_member_statefulset(shard, shard.members[1], master=shard.members[0], images=IMAGES)
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == "mailshard-local"
    assert claim["spec"]["resources"]["requests"]["storage"] == "3Gi"
    assert statefulset["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"


def test_no_storage_class_means_the_cluster_default() -> None:
    shard = resolved_shard()
    statefulset = build_member_statefulset(shard, shard.members[0], master=shard.members[0], images=IMAGES)
    assert "storageClassName" not in statefulset["spec"]["volumeClaimTemplates"][0]["spec"]
    assert statefulset["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"


@pytest.mark.parametrize(
    ("backend", "image"), [("dovecot", "mailshard/dovecot:1.2.3"), ("cyrus", "mailshard/cyrus:1.2.3")]
)
def test_default_image_follows_backend_and_version(backend: str, image: str) -> None:
    shard = resolved_shard(backend=backend)
    statefulset = build_member_statefulset(
        shard, shard.members[0], master=shard.members[0], images=BackendImages.for_version("1.2.3")
    )
    assert statefulset["spec"]["template"]["spec"]["containers"][0]["image"] == image


def test_spec_image_overrides_the_default() -> None:
    shard = resolved_shard(image="example.com/mine:1")
    assert IMAGES.image_for(shard) == "example.com/mine:1"


def test_pod_runs_unprivileged_with_readiness_on_the_agent() -> None:
    shard = resolved_shard()
    pod = build_member_statefulset(shard, shard.members[0], master=shard.members[0], images=IMAGES)["spec"]["template"][
        "spec"
    ]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "agent"}
    assert "livenessProbe" not in container
    assert pod["automountServiceAccountToken"] is False


def test_config_change_changes_the_pod_template() -> None:
    small, large = resolved_shard(capacity={"mailboxes": 10}), resolved_shard(capacity={"mailboxes": 20})
    annotation = "mailshard.io/config-hash"

    def config_hash(shard: Any) -> str:
        sts = build_member_statefulset(shard, shard.members[0], master=shard.members[0], images=IMAGES)
        value: str = sts["spec"]["template"]["metadata"]["annotations"][annotation]
        return value

    assert config_hash(small) != config_hash(large)
    assert config_hash(small) == config_hash(resolved_shard(capacity={"mailboxes": 10}))


def test_config_map_carries_the_runtime_contract() -> None:
    shard = resolved_shard("inbox-3", compression="zlib", replication={"port": 4000, "maxLagSeconds": 12})
    config_map = build_config_map(shard)
    assert config_map["metadata"]["name"] == "inbox-3-config"
    config = ShardRuntimeConfig.from_json(config_map["data"][SHARD_CONFIG_KEY])
    assert config.shard == "inbox-3"
    assert config.namespace == "mail"
    assert [m.host for m in config.members] == [
        "inbox-3-a-0.inbox-3-a.mail.svc",
        "inbox-3-b-0.inbox-3-b.mail.svc",
    ]
    assert config.ports.replication == 4000
    assert config.replication.max_lag_seconds == 12
    assert config.compression == "zlib"
    assert config.peer_of("inbox-3-a").name == "inbox-3-b"


def test_secret_carries_the_given_credentials_and_never_shows_them() -> None:
    credentials = ShardCredentials(replication_password="s3cret", agent_token="t0ken")
    secret = build_replication_secret(resolved_shard("inbox-2"), credentials)
    assert secret["metadata"]["name"] == "inbox-2-replication"
    assert secret["immutable"] is True
    decoded = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    assert decoded == {"replication-password": "s3cret", "agent-token": "t0ken"}
    assert "s3cret" not in repr(credentials)
    assert "t0ken" not in repr(credentials)


def test_empty_credentials_are_refused() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        ShardCredentials(replication_password="", agent_token="x")


def test_disruption_budget_allows_one_member_down() -> None:
    budget = build_pod_disruption_budget(resolved_shard("inbox-4"))
    assert budget["metadata"]["name"] == "inbox-4"
    assert budget["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": {"mailshard.io/shard": "inbox-4"}}}


def test_every_object_is_owned_by_the_shard_and_labelled() -> None:
    shard = resolved_shard("inbox-5", clusterRef={"name": "demo"})
    manifests = build_shard_manifests(shard, master=shard.members[0], images=IMAGES)
    secret = build_replication_secret(shard, ShardCredentials(replication_password="p", agent_token="t"))
    for manifest in [*manifests.in_apply_order(), secret]:
        metadata = manifest["metadata"]
        assert metadata["namespace"] == "mail"
        [owner] = metadata["ownerReferences"]
        assert owner == {
            "apiVersion": "mailshard.io/v1alpha1",
            "kind": "MailShard",
            "name": "inbox-5",
            "uid": shard.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        labels = metadata["labels"]
        assert labels["app.kubernetes.io/name"] == "mailshard"
        assert labels["app.kubernetes.io/instance"] == "inbox-5"
        assert labels["app.kubernetes.io/part-of"] == "demo"
        assert labels["app.kubernetes.io/managed-by"] == "mailshard-operator"
        assert labels["app.kubernetes.io/component"]


def test_standalone_shard_is_part_of_itself() -> None:
    shard = resolved_shard("solo")
    assert build_master_service(shard)["metadata"]["labels"]["app.kubernetes.io/part-of"] == "solo"


def test_manifests_are_applied_config_first_and_budget_last() -> None:
    shard = resolved_shard()
    kinds = [m["kind"] for m in build_shard_manifests(shard, master=shard.members[0], images=IMAGES).in_apply_order()]
    assert kinds == ["ConfigMap", "Service", "Service", "Service", "StatefulSet", "StatefulSet", "PodDisruptionBudget"]


@pytest.mark.parametrize(("member", "master"), [("inbox-1-c", "inbox-1-a"), ("inbox-1-a", "other-a")])
def test_unknown_member_or_master_is_refused(member: str, master: str) -> None:
    with pytest.raises(ValueError, match="is not a member"):
        build_member_statefulset(resolved_shard(), member, master=master, images=IMAGES)


def test_builders_do_not_mutate_the_users_placement() -> None:
    affinity = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": []}}
    shard = resolved_shard(placement={"affinity": affinity})
    build_member_statefulset(shard, shard.members[0], master=shard.members[0], images=IMAGES)
    assert shard.spec.placement.affinity == affinity
    assert (
        member_anti_affinity_term(shard.name)
        not in affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    )


def test_preferred_spreading_reaches_both_statefulsets_as_a_preference() -> None:
    shard = resolved_shard(placement={"podAntiAffinityType": "preferred"})
    term = member_anti_affinity_term(shard.name)
    for member in shard.members:
        statefulset = build_member_statefulset(shard, member, master=shard.members[0], images=IMAGES)
        anti = statefulset["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        assert anti == {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]}


def test_an_unknown_anti_affinity_type_is_refused_at_the_boundary() -> None:
    with pytest.raises(pydantic.ValidationError, match="required"):
        resolved_shard(placement={"podAntiAffinityType": "sometimes"})
