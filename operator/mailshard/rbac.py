"""The API permissions the operator needs, and nothing more: one source for the Helm chart and the tests.

Each rule says why it is there. No wildcard verbs or resources. Secrets are
created (the replication credentials, each shard's users) and read by name
only (those, and the users Secrets a MailCluster names), never listed or
watched, so the operator cannot read every Secret in the cluster.
"""

from __future__ import annotations

from typing import Any, Final

from mailshard.api.constants import GROUP

READ: Final = ("get", "list", "watch")
MANAGE: Final = ("get", "list", "watch", "create", "patch", "update", "delete")

RULES: Final[tuple[tuple[str, tuple[str, ...], tuple[str, ...], str], ...]] = (
    (
        GROUP,
        ("mailshards", "mailclusters"),
        ("get", "list", "watch", "patch", "update"),
        "our resources; kopf's finalizer and bookkeeping annotations",
    ),
    (
        GROUP,
        ("mailshards/status", "mailclusters/status"),
        ("get", "patch", "update"),
        "status written by the reconcilers",
    ),
    (
        GROUP,
        ("mailshards/finalizers", "mailclusters/finalizers"),
        ("update",),
        "owner references with blockOwnerDeletion",
    ),
    ("apps", ("statefulsets",), MANAGE, "one StatefulSet per member"),
    ("apps", ("deployments",), MANAGE, "the proxy tier of each MailCluster"),
    (
        "",
        ("serviceaccounts",),
        ("get", "create", "patch", "update", "delete"),
        "the proxies' own identity; read back by name, never listed",
    ),
    (
        "rbac.authorization.k8s.io",
        ("roles", "rolebindings"),
        ("get", "create", "patch", "update", "delete"),
        "the proxies may read their routing ConfigMap and nothing else (a Role with resourceNames)",
    ),
    ("", ("services", "configmaps"), MANAGE, "member and master Services, the runtime ConfigMap"),
    (
        "",
        ("secrets",),
        ("get", "create", "patch"),
        "the replication Secret (created once), each shard's users Secret (kept current); by name, never listed",
    ),
    (
        "",
        ("pods",),
        ("get", "list", "watch", "patch", "delete"),
        "member readiness; role labels; fencing a dead master",
    ),
    ("", ("persistentvolumeclaims",), ("get", "list", "patch", "delete"), "growing mail volumes; reclaimPolicy Delete"),
    ("policy", ("poddisruptionbudgets",), MANAGE, "one budget per pair"),
    ("", ("events",), ("create", "patch"), "Events about our resources"),
    ("events.k8s.io", ("events",), ("create", "patch"), "Events through the newer API"),
    ("storage.k8s.io", ("storageclasses",), ("get", "list"), "checking spec.storage.storageClassName"),
    ("", ("nodes",), READ, "node readiness for failover"),
    ("", ("namespaces",), ("list", "watch"), "kopf: discovering namespaces"),
    ("apiextensions.k8s.io", ("customresourcedefinitions",), ("list", "watch"), "kopf: discovering our CRDs"),
    (
        "kopf.dev",
        ("clusterkopfpeerings", "kopfpeerings"),
        ("get", "list", "watch", "patch"),
        "kopf peering: one active operator",
    ),
)


def cluster_role_rules() -> list[dict[str, Any]]:
    """The rules as a ClusterRole's `rules`."""
    return [
        {"apiGroups": [group], "resources": list(resources), "verbs": list(verbs)}
        for group, resources, verbs, _why in RULES
    ]
