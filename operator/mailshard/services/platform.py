"""The operator's services wired together once at start-up and shared by every handler.

Handlers stay thin (a decorator and one call) by finding everything they need
here, on kopf's memo. Tests build the same object against their own API client.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailshard.metrics import OperatorMetrics
from mailshard.services.cluster import ClusterReconciler
from mailshard.services.events import EventRecorder
from mailshard.services.failover import FailoverMonitor
from mailshard.services.kube import KubeApi, Manifest
from mailshard.services.member_views import MemberViews
from mailshard.services.routing import RoutingPublisher
from mailshard.services.shard import ShardReconciler


@dataclass
class Platform:
    """Every service of the operator, built around one API client."""

    api: KubeApi
    events: EventRecorder
    shards: ShardReconciler
    clusters: ClusterReconciler
    """Also publishes each cluster's routing table, in the same serialised run as its status."""

    metrics: OperatorMetrics
    views: MemberViews
    failover: FailoverMonitor
    """Polls each shard's agents every second and fails over; records through `after_failover_record`."""

    @classmethod
    def build(cls, api: KubeApi, metrics: OperatorMetrics | None = None) -> Platform:
        metrics = metrics or OperatorMetrics()
        api.on_write = lambda verb, kind: metrics.api_writes.labels(verb=verb, kind=kind).inc()
        events = EventRecorder(api)
        views = MemberViews()
        shards = ShardReconciler(api, events, metrics=metrics, views=views)
        # A new shard's members start only once its users Secret exists (mounted at start, it holds every user
        # from the first second, where one written after the pod started arrives at the kubelet's next sync).
        clusters = ClusterReconciler(
            api, events, RoutingPublisher(api, events), metrics=metrics, users_written=shards.reconcile
        )

        def after_failover_record(namespace: str, shard: str, cluster: str | None) -> None:
            # The shard's phase, conditions and pod labels first, then the routing table from its new status.
            shards.reconcile(namespace, shard)
            if cluster is not None:
                clusters.reconcile(namespace, cluster)

        failover = FailoverMonitor(api, events, views, after_record=after_failover_record, metrics=metrics)
        return cls(
            api=api,
            events=events,
            shards=shards,
            clusters=clusters,
            metrics=metrics,
            views=views,
            failover=failover,
        )

    def cluster_changed(self, namespace: str, name: str) -> None:
        """A cluster's spec changed or it appeared: its routing first, then its shards, then its status again.

        Routing goes first because a changed overrides source must reach the
        proxies within a second, while re-applying shard defaults to many
        shards can take longer; the last pass records the shards' new state.
        """
        self.clusters.reconcile(namespace, name)
        for shard in self.shards_of(namespace, name):
            self.shards.reconcile(namespace, shard["metadata"]["name"])
        self.clusters.reconcile(namespace, name)

    def shards_of(self, namespace: str, cluster: str) -> list[Manifest]:
        return [
            shard
            for shard in self.api.list("MailShard", namespace)
            if ((shard.get("spec") or {}).get("clusterRef") or {}).get("name") == cluster
        ]
