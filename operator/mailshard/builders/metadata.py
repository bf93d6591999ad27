"""Labels and owner references every object of a shard, or of a cluster, carries.

One place decides them so that every object of a shard can be found by the
same selector (`mailshard.io/shard=<name>`) and is garbage-collected with its
MailShard, and every object of a cluster (the routing table) goes with its
MailCluster.
"""

from __future__ import annotations

from typing import Any, Final

from mailshard.api.constants import (
    APP_NAME,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
    LABEL_SHARD,
    MANAGED_BY,
)
from mailshard.api.v1alpha1 import API_VERSION, MailCluster, ResolvedShard
from mailshard.api.v1alpha1.cluster import KIND as CLUSTER_KIND
from mailshard.api.v1alpha1.shard import KIND

COMPONENT_MAIL_STORE: Final = "mail-store"
"""The members: StatefulSets, pods, volumes, headless Services, the disruption budget."""
COMPONENT_MAIL_ENDPOINT: Final = "mail-endpoint"
"""The `<shard>-master` Service clients and proxies connect to."""
COMPONENT_CONFIG: Final = "config"
COMPONENT_CREDENTIALS: Final = "credentials"
COMPONENT_PROXY: Final = "proxy"
"""The cluster's proxy tier: Deployment, Service, its ServiceAccount and Role, its disruption budget."""
COMPONENT_ROUTING: Final = "routing"
"""The cluster's routing table ConfigMap. It carries no shard label: it belongs to the cluster."""


def _shard_labels(shard_name: str, part_of: str, component: str) -> dict[str, str]:
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: shard_name,
        LABEL_COMPONENT: component,
        LABEL_PART_OF: part_of,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_SHARD: shard_name,
    }


def _shard_owner(shard_name: str, shard_uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": shard_name,
        "uid": shard_uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def standard_labels(shard: ResolvedShard, component: str) -> dict[str, str]:
    """The recommended `app.kubernetes.io/*` labels plus the shard label."""
    return _shard_labels(shard.name, shard.part_of, component)


def owner_reference(shard: ResolvedShard) -> dict[str, Any]:
    """Makes the MailShard the controller of an object, so deleting the shard deletes it."""
    return _shard_owner(shard.name, shard.uid)


def shard_object_metadata(
    *, name: str, namespace: str, shard_name: str, shard_uid: str, part_of: str, component: str
) -> dict[str, Any]:
    """`metadata` of an object owned by a shard that someone else than the shard's reconciler writes
    (the cluster reconciler writes each shard's users), from the shard's name and uid alone."""
    return {
        "name": name,
        "namespace": namespace,
        "labels": _shard_labels(shard_name, part_of, component),
        "ownerReferences": [_shard_owner(shard_name, shard_uid)],
    }


def object_metadata(
    shard: ResolvedShard, name: str, component: str, *, extra_labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """`metadata` of a namespaced object owned by the shard."""
    labels = standard_labels(shard, component)
    labels.update(extra_labels or {})
    return {
        "name": name,
        "namespace": shard.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(shard)],
    }


def cluster_labels(cluster: MailCluster, component: str) -> dict[str, str]:
    """The recommended `app.kubernetes.io/*` labels of an object of the cluster as a whole."""
    name = cluster.metadata.name
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: name,
        LABEL_COMPONENT: component,
        LABEL_PART_OF: name,
        LABEL_MANAGED_BY: MANAGED_BY,
    }


def cluster_object_metadata(cluster: MailCluster, name: str, component: str) -> dict[str, Any]:
    """`metadata` of a namespaced object controlled by the MailCluster, so deleting the cluster deletes it."""
    return {
        "name": name,
        "namespace": cluster.metadata.namespace,
        "labels": cluster_labels(cluster, component),
        "ownerReferences": [
            {
                "apiVersion": API_VERSION,
                "kind": CLUSTER_KIND,
                "name": cluster.metadata.name,
                "uid": cluster.metadata.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
