"""Per-object gauges are the latest facts of live objects: a forgotten shard or cluster leaves no stale series."""

from __future__ import annotations

import pytest

from mailshard.metrics import ClusterFacts, OperatorMetrics, ShardFacts

pytestmark = pytest.mark.unit


def samples(metrics: OperatorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
    }


def test_cluster_proxy_gauges_hold_the_latest_numbers_until_forgotten() -> None:
    metrics = OperatorMetrics()
    labels = (("cluster", "demo"), ("namespace", "mail"))
    metrics.clusters.update("mail", "demo", ClusterFacts(proxies_ready=0, proxies_desired=2))
    metrics.clusters.update("mail", "demo", ClusterFacts(proxies_ready=1, proxies_desired=2))
    metrics.clusters.update("other", "edge", ClusterFacts(proxies_ready=3, proxies_desired=3))
    seen = samples(metrics)
    assert seen[("mailshard_cluster_proxies_ready", labels)] == 1
    assert seen[("mailshard_cluster_proxies_desired", labels)] == 2
    metrics.clusters.forget("mail", "demo")
    seen = samples(metrics)
    assert ("mailshard_cluster_proxies_ready", labels) not in seen
    assert ("mailshard_cluster_proxies_desired", labels) not in seen
    assert seen[("mailshard_cluster_proxies_ready", (("cluster", "edge"), ("namespace", "other")))] == 3


def test_shards_by_phase_count_live_shards_and_every_phase_is_present() -> None:
    metrics = OperatorMetrics()
    metrics.shards.update("mail", "a", ShardFacts(phase="Healthy", lag_seconds=0.2))
    metrics.shards.update("mail", "b", ShardFacts(phase="Healthy", lag_seconds=None))
    metrics.shards.update("mail", "c", ShardFacts(phase="Degraded", lag_seconds=None))
    metrics.shards.forget("mail", "c")
    seen = samples(metrics)
    assert seen[("mailshard_shards", (("phase", "Healthy"),))] == 2
    assert seen[("mailshard_shards", (("phase", "Degraded"),))] == 0
    assert seen[("mailshard_replication_lag_seconds", (("namespace", "mail"), ("shard", "a")))] == 0.2
    assert ("mailshard_replication_lag_seconds", (("namespace", "mail"), ("shard", "b"))) not in seen
