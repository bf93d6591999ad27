"""The StatefulSet of one member: a single pod with its own mail volume.

Why one StatefulSet per member rather than one with two replicas: the two
members are not interchangeable ordinals. Each has a role that changes at
failover, its own volume that must never be handed to the other, and must be
restartable on its own (replica first during a rollout). One single-replica
StatefulSet each gives every member a stable pod name, DNS name and volume,
and lets the operator act on one without touching the other.

Roles. The role is an input (`master` names the master member) and goes into
the pod template's `mailshard.io/role` label so that a recreated pod comes back
with the role the operator last decided. The update strategy is `OnDelete`:
changing the template (a failover swapping roles, a new image, a new config
hash) never restarts a pod by itself; the service patches the live pod's role
label at failover, and decides when and in which order pods are replaced.
"""

from __future__ import annotations

from typing import Any, Final

from mailshard.api.constants import (
    AGENT_HEALTH_PATH,
    ANNOTATION_CONFIG_HASH,
    CONFIG_DIR,
    DATA_PATH,
    ENV_CONFIG_FILE,
    ENV_INITIAL_ROLE,
    ENV_MEMBER,
    LABEL_MEMBER,
    LABEL_ROLE,
    LABEL_SHARD,
    MAIL_USER_ID,
    PORT_NAME_AGENT,
    SECRETS_DIR,
    SHARD_CONFIG_FILE,
    USERS_DIR,
)
from mailshard.api.v1alpha1 import MemberRole, PodAntiAffinityType, ReclaimPolicy, ResolvedShard
from mailshard.builders.affinity import merge_affinity
from mailshard.builders.images import BackendImages
from mailshard.builders.metadata import COMPONENT_MAIL_STORE, object_metadata, standard_labels
from mailshard.builders.names import (
    CONTAINER_NAME,
    MAIL_VOLUME,
    config_map_name,
    member_service_name,
    replication_secret_name,
    statefulset_name,
    users_secret_name,
)
from mailshard.builders.ports import member_container_ports
from mailshard.builders.runtime_config import build_runtime_config, runtime_config_hash

CONFIG_VOLUME: Final = "config"
SECRETS_VOLUME: Final = "secrets"
USERS_VOLUME: Final = "users"

TERMINATION_GRACE_SECONDS: Final = 60
"""Time for the backend to finish in-flight deliveries and flush its indexes before it is killed."""

SECRET_FILE_MODE: Final = 0o440
"""Readable by the mail user's group (fsGroup) only."""


def member_selector(shard: ResolvedShard, member: str) -> dict[str, str]:
    """Selects the one pod of a member; never includes the role, which changes."""
    return {LABEL_SHARD: shard.name, LABEL_MEMBER: member}


def role_of(member: str, *, master: str) -> MemberRole:
    return MemberRole.MASTER if member == master else MemberRole.REPLICA


def _check_members(shard: ResolvedShard, *names: str) -> None:
    for name in names:
        if name not in shard.members:
            raise ValueError(f"{name!r} is not a member of shard {shard.name!r}; members are {shard.members}")


def build_member_statefulset(
    shard: ResolvedShard, member: str, *, master: str, images: BackendImages
) -> dict[str, Any]:
    """The StatefulSet `<member>` running one pod of the shard in the role `master` implies."""
    _check_members(shard, member, master)
    role = role_of(member, master=master)
    pod_labels = {
        **standard_labels(shard, COMPONENT_MAIL_STORE),
        LABEL_MEMBER: member,
        LABEL_ROLE: role.value,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": object_metadata(
            shard, statefulset_name(member), COMPONENT_MAIL_STORE, extra_labels={LABEL_MEMBER: member}
        ),
        "spec": {
            "replicas": 1,
            "serviceName": member_service_name(member),
            "selector": {"matchLabels": member_selector(shard, member)},
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            "persistentVolumeClaimRetentionPolicy": {
                # Delete hands the claims to the StatefulSet, which is garbage-collected with the shard.
                "whenDeleted": "Delete" if shard.spec.storage.reclaim_policy is ReclaimPolicy.DELETE else "Retain",
                "whenScaled": "Retain",
            },
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {ANNOTATION_CONFIG_HASH: runtime_config_hash(build_runtime_config(shard))},
                },
                "spec": _pod_spec(shard, member, images),
            },
            "volumeClaimTemplates": [_mail_volume_claim(shard, member)],
        },
    }


def _pod_spec(shard: ResolvedShard, member: str, images: BackendImages) -> dict[str, Any]:
    placement = shard.spec.placement
    spec: dict[str, Any] = {
        "affinity": merge_affinity(
            placement.affinity,
            shard.name,
            # Anything but an explicit `preferred` keeps the members apart for sure.
            required=placement.pod_anti_affinity_type is not PodAntiAffinityType.PREFERRED,
        ),
        # The agent gets everything from shard.json and from the operator's calls:
        # a mail server has no use for Kubernetes API credentials.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": {
            # The backends run in their single-user mode (the agent, Dovecot or Cyrus and every
            # file of the volume belong to one unprivileged user), which is why the pod needs no
            # root: classic Dovecot setups start the master as root only to setuid to each user.
            "runAsNonRoot": True,
            "runAsUser": MAIL_USER_ID,
            "runAsGroup": MAIL_USER_ID,
            "fsGroup": MAIL_USER_ID,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
            # Lets the unprivileged backend bind the well-known mail ports (143, 110, 24);
            # a safe, namespaced sysctl, allowed by the restricted Pod Security Standard.
            "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}],
        },
        "containers": [_mail_container(shard, member, images)],
        "volumes": [
            {"name": CONFIG_VOLUME, "configMap": {"name": config_map_name(shard.name)}},
            {
                "name": SECRETS_VOLUME,
                "secret": {"secretName": replication_secret_name(shard.name), "defaultMode": SECRET_FILE_MODE},
            },
            {
                "name": USERS_VOLUME,
                # Written by the cluster's reconciler once the shard has a row in the routing table, and
                # updated in place (the kubelet refreshes it; Dovecot re-reads a passwd-file that changed).
                # Optional, so a member starts before it exists: with no users it serves nobody.
                "secret": {
                    "secretName": users_secret_name(shard.name),
                    "defaultMode": SECRET_FILE_MODE,
                    "optional": True,
                },
            },
        ],
    }
    if placement.node_selector:
        spec["nodeSelector"] = dict(sorted(placement.node_selector.items()))
    if placement.tolerations:
        spec["tolerations"] = [dict(toleration) for toleration in placement.tolerations]
    return spec


def _mail_container(shard: ResolvedShard, member: str, images: BackendImages) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        # The image's entrypoint is the agent: it renders the backend's configuration from
        # shard.json, runs the backend, and serves the API the operator drives failover with.
        "image": images.image_for(shard),
        "env": [
            {"name": ENV_CONFIG_FILE, "value": SHARD_CONFIG_FILE},
            {"name": ENV_MEMBER, "value": member},
            {
                "name": ENV_INITIAL_ROLE,
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{LABEL_ROLE}']"}},
            },
        ],
        "ports": member_container_ports(shard),
        # Readiness only: whether a member should be replaced is the operator's decision
        # (failover, fencing), never the kubelet's, so there is no liveness probe.
        "readinessProbe": {
            "httpGet": {"path": AGENT_HEALTH_PATH, "port": PORT_NAME_AGENT},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": MAIL_VOLUME, "mountPath": DATA_PATH},
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": SECRETS_VOLUME, "mountPath": SECRETS_DIR, "readOnly": True},
            {"name": USERS_VOLUME, "mountPath": USERS_DIR, "readOnly": True},
        ],
    }
    resources = shard.spec.resources.to_manifest()
    if resources:
        container["resources"] = resources
    return container


def _mail_volume_claim(shard: ResolvedShard, member: str) -> dict[str, Any]:
    storage = shard.spec.storage
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": storage.size}},
    }
    if storage.storage_class_name:
        claim_spec["storageClassName"] = storage.storage_class_name
    labels = {**standard_labels(shard, COMPONENT_MAIL_STORE), LABEL_MEMBER: member}
    return {"metadata": {"name": MAIL_VOLUME, "labels": labels}, "spec": claim_spec}
