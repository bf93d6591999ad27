"""MailCluster handlers: a cluster's spec feeds its shards; its shards and ConfigMaps feed its routing and status."""

from __future__ import annotations

from typing import Any

import kopf

from mailshard.api.constants import GROUP, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY
from mailshard.api.v1alpha1 import VERSION
from mailshard.builders.metadata import COMPONENT_PROXY, COMPONENT_ROUTING
from mailshard.handlers.shards import RESYNC_SECONDS
from mailshard.handlers.support import namespaced

OverridesIndex = kopf.Index[tuple[str, str], str]


@kopf.on.resume(GROUP, VERSION, "mailclusters")
@kopf.on.create(GROUP, VERSION, "mailclusters")
@kopf.on.update(GROUP, VERSION, "mailclusters")
def mailcluster_changed(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    memo.platform.cluster_changed(namespaced(namespace), name)


@kopf.timer(GROUP, VERSION, "mailclusters", interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def mailcluster_resync(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    memo.platform.clusters.reconcile(namespaced(namespace), name)


@kopf.on.event(GROUP, VERSION, "mailshards")
def shard_seen(type: str, namespace: str | None, spec: kopf.Spec, memo: Any, **_: Any) -> None:
    # Every change of a shard, its status included (a new master, fencing), reaches the routing table from here.
    cluster = (spec.get("clusterRef") or {}).get("name")
    if type and cluster:
        memo.platform.clusters.reconcile(namespaced(namespace), cluster)


@kopf.index(GROUP, VERSION, "mailclusters")
def overrides_sources(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str], str] | None:
    """(namespace, ConfigMap name) → the clusters that take their routing overrides from that ConfigMap."""
    source = (spec.get("routing") or {}).get("overridesConfigMap")
    return {(namespaced(namespace), source): name} if source else None


def _is_overrides_source(namespace: str | None, name: str, **kwargs: Any) -> bool:
    sources: OverridesIndex = kwargs["overrides_sources"]
    return (namespace or "", name) in sources


@kopf.on.event("v1", "configmaps", when=_is_overrides_source)
def overrides_changed(type: str, namespace: str | None, name: str, memo: Any, **kwargs: Any) -> None:
    sources: OverridesIndex = kwargs["overrides_sources"]
    if type:
        for cluster in sources.get((namespaced(namespace), name), ()):
            memo.platform.clusters.reconcile(namespaced(namespace), cluster)


@kopf.on.event("v1", "configmaps", labels={LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: COMPONENT_ROUTING})
def routing_table_changed(type: str, namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    # Our own writes echo back here at the cost of a few reads; someone else's edit or deletion is answered at once.
    if type:
        memo.platform.clusters.reconcile(namespaced(namespace), labels[LABEL_INSTANCE])


@kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED_BY: MANAGED_BY, LABEL_COMPONENT: COMPONENT_PROXY})
def proxies_changed(type: str, namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    # Proxies becoming ready (status.proxiesReady, the Ready condition), or someone editing or deleting the tier.
    if type:
        memo.platform.clusters.reconcile(namespaced(namespace), labels[LABEL_INSTANCE])
