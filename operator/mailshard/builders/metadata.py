"""Labels and owner references every object of a shard carries.

One place decides them so that every object can be found by the same selector
(`mailshard.io/shard=<name>`) and is garbage-collected with its MailShard.
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
from mailshard.api.v1alpha1 import API_VERSION, ResolvedShard
from mailshard.api.v1alpha1.shard import KIND

COMPONENT_MAIL_STORE: Final = "mail-store"
"""The members: StatefulSets, pods, volumes, headless Services, the disruption budget."""
COMPONENT_MAIL_ENDPOINT: Final = "mail-endpoint"
"""The `<shard>-master` Service clients and proxies connect to."""
COMPONENT_CONFIG: Final = "config"
COMPONENT_CREDENTIALS: Final = "credentials"


def standard_labels(shard: ResolvedShard, component: str) -> dict[str, str]:
    """The recommended `app.kubernetes.io/*` labels plus the shard label."""
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: shard.name,
        LABEL_COMPONENT: component,
        LABEL_PART_OF: shard.part_of,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_SHARD: shard.name,
    }


def owner_reference(shard: ResolvedShard) -> dict[str, Any]:
    """Makes the MailShard the controller of an object, so deleting the shard deletes it."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": shard.name,
        "uid": shard.uid,
        "controller": True,
        "blockOwnerDeletion": True,
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
