"""MailCluster handlers: a cluster's spec feeds its shards; its shards feed its status."""

from __future__ import annotations

from typing import Any

import kopf

from mailshard.api.constants import GROUP
from mailshard.api.v1alpha1 import VERSION
from mailshard.handlers.shards import RESYNC_SECONDS
from mailshard.handlers.support import namespaced


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
    cluster = (spec.get("clusterRef") or {}).get("name")
    if type and cluster:
        memo.platform.clusters.reconcile(namespaced(namespace), cluster)
