"""The API permissions the operator needs, and nothing more: one source for the Helm chart and the tests.

Each rule says why it is there, and holds only the verbs the code uses (the
operator writes with server-side apply, JSON merge patch and create; it
deletes only mail volumes (under `reclaimPolicy: Delete`, or lost with their
node) and the pod of a member started afresh, and kopf patches, never
updates). No wildcard verbs or resources.

The rules come in two scopes. `CLUSTER_RULES` concern cluster-scoped objects
(our CRDs, namespaces, StorageClasses, the cluster-wide peering) and always
sit in the ClusterRole. `NAMESPACED_RULES` concern the objects in the
namespaces where shards live: an operator watching every namespace needs them
cluster-wide (the ClusterRole), one watching a list of namespaces only there
(a Role in each, so it cannot touch anything elsewhere). Secrets are among
them and are only created, patched and read by name, never listed or watched:
the operator reads exactly the Secrets it creates (`<shard>-replication`,
`<shard>-users`) and the users Secrets a MailCluster names in
`spec.users.secretNames`. Kubernetes RBAC cannot limit `get` to names not
known in advance, so watching every namespace means it *may* get any Secret
by name anywhere; `watchNamespaces` confines that to the listed namespaces.
"""

from __future__ import annotations

from typing import Any, Final

from mailshard.api.constants import GROUP

Rule = tuple[str, tuple[str, ...], tuple[str, ...], str]
"""(API group, resources, verbs, why)."""

APPLIED: Final = ("get", "list", "watch", "create", "patch")
"""Children the operator watches and server-side applies (a create when missing, a patch otherwise)."""

CLUSTER_RULES: Final[tuple[Rule, ...]] = (
    ("storage.k8s.io", ("storageclasses",), ("get", "list"), "checking spec.storage.storageClassName"),
    ("", ("namespaces",), ("list", "watch"), "kopf: discovering the namespaces to watch"),
    (
        "",
        ("persistentvolumes", "nodes"),
        ("get",),
        "which node a member's local volume lives on, and whether that node is still there and Ready",
    ),
    ("apiextensions.k8s.io", ("customresourcedefinitions",), ("list", "watch"), "kopf: discovering our CRDs"),
    (
        "kopf.dev",
        ("clusterkopfpeerings",),
        ("get", "list", "watch", "patch"),
        "kopf peering across the cluster: one active operator",
    ),
)

NAMESPACED_RULES: Final[tuple[Rule, ...]] = (
    (
        GROUP,
        ("mailshards", "mailclusters"),
        ("get", "list", "watch", "patch"),
        "our resources; kopf's finalizer and bookkeeping annotations; the switchover request removed",
    ),
    (GROUP, ("mailshards/status", "mailclusters/status"), ("get", "patch"), "status written by the reconcilers"),
    (
        GROUP,
        ("mailshards/finalizers", "mailclusters/finalizers"),
        ("update",),
        "owner references with blockOwnerDeletion (where OwnerReferencesPermissionEnforcement is on)",
    ),
    ("apps", ("statefulsets",), APPLIED, "one StatefulSet per member"),
    ("apps", ("deployments",), APPLIED, "the proxy tier of each MailCluster"),
    (
        "",
        ("serviceaccounts",),
        ("get", "create", "patch"),
        "the proxies' own identity; read back by name, never listed",
    ),
    (
        "rbac.authorization.k8s.io",
        ("roles", "rolebindings"),
        ("get", "create", "patch"),
        "the proxies may read their routing ConfigMap and nothing else (a Role with resourceNames)",
    ),
    ("", ("services", "configmaps"), APPLIED, "member and master Services, runtime and routing ConfigMaps"),
    (
        "",
        ("secrets",),
        ("get", "create", "patch"),
        "<shard>-replication (created once), <shard>-users (kept current), the users Secrets a MailCluster "
        "names; by name, never listed",
    ),
    (
        "",
        ("pods",),
        ("list", "watch", "patch", "delete"),
        "member readiness and addresses; the role label; a member whose volume is lost is started afresh",
    ),
    (
        "",
        ("persistentvolumeclaims",),
        ("get", "patch", "delete"),
        "growing mail volumes; deleting them under reclaimPolicy Delete, or when lost with their node",
    ),
    ("policy", ("poddisruptionbudgets",), APPLIED, "one budget per pair and per proxy tier"),
    ("", ("events",), ("create",), "Events about our resources (ours and kopf's)"),
    (
        "kopf.dev",
        ("kopfpeerings",),
        ("get", "list", "watch", "patch"),
        "kopf peering per watched namespace: one active operator",
    ),
)

RULES: Final[tuple[Rule, ...]] = CLUSTER_RULES + NAMESPACED_RULES
"""Everything, for an operator that watches every namespace."""


def _as_manifest(rules: tuple[Rule, ...]) -> list[dict[str, Any]]:
    return [
        {"apiGroups": [group], "resources": list(resources), "verbs": list(verbs)}
        for group, resources, verbs, _why in rules
    ]


def cluster_role_rules(*, every_namespace: bool = True) -> list[dict[str, Any]]:
    """The ClusterRole's `rules`: everything when the operator watches every namespace, else the cluster-scoped."""
    return _as_manifest(RULES if every_namespace else CLUSTER_RULES)


def role_rules() -> list[dict[str, Any]]:
    """The `rules` of the Role in each watched namespace, when the operator watches a list of them."""
    return _as_manifest(NAMESPACED_RULES)
