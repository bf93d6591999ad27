"""The failover monitor's daemon per MailShard, and the pod index it reads instead of the API."""

from __future__ import annotations

from typing import Any

import kopf

from mailshard.api.constants import GROUP, LABEL_SHARD
from mailshard.api.v1alpha1 import VERSION
from mailshard.handlers.support import namespaced
from mailshard.services.failover import PodView, pod_index_key, pod_view

ShardPods = kopf.Index[tuple[str, str], PodView]


@kopf.index("v1", "pods", labels={LABEL_SHARD: kopf.PRESENT})
def shard_pods(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], PodView] | None:
    """(namespace, shard) → its member pods, kept current by the watch: the monitor polls without API reads."""
    key = pod_index_key(namespaced(namespace), labels)
    return {key: pod_view(body)} if key is not None else None


@kopf.daemon(GROUP, VERSION, "mailshards", cancellation_timeout=10.0)
async def failover_monitor(
    namespace: str | None, name: str, body: kopf.Body, stopped: kopf.DaemonStopped, memo: Any, **kwargs: Any
) -> None:
    pods: ShardPods = kwargs["shard_pods"]
    key = (namespaced(namespace), name)
    await memo.platform.failover.watch(key[0], name, lambda: dict(body), lambda: list(pods.get(key, ())), stopped)


@kopf.on.cleanup()
async def close_agent_client(memo: Any, **_: Any) -> None:
    platform = getattr(memo, "platform", None)
    if platform is not None:
        await platform.failover.agents.close()
