"""The operator's Prometheus metrics: one registry, names the chart's alerts and dashboard rely on.

Per-shard facts (phase, replication lag) and per-cluster facts (proxies ready
and desired) are kept as the latest value the reconcilers saw and exported by
collectors at scrape time, so a deleted shard or cluster disappears from the
metrics instead of lingering as a stale series. Counters and histograms are
ordinary prometheus-client instruments.

Names (also listed in the chart's values and used by its PrometheusRule):

- `mailshard_shards{phase}`: shards by phase.
- `mailshard_replication_lag_seconds{namespace,shard}`: the replica's lag as last reported.
- `mailshard_failovers_total{namespace,shard,reason}` and `mailshard_failover_duration_seconds`.
- `mailshard_reconcile_duration_seconds{kind}` and `mailshard_reconcile_errors_total{kind}`.
- `mailshard_cluster_proxies_ready{namespace,cluster}` and `mailshard_cluster_proxies_desired{namespace,cluster}`:
  the numbers behind the cluster's `status.proxiesReady` and its `spec.proxy.replicas`.
- `mailshard_routing_table_version{namespace,cluster}` and
  `mailshard_routing_table_updated_timestamp_seconds{namespace,cluster}` (age = `time() - …`).
- `mailshard_api_writes_total{verb,kind}`: every write the operator makes, to prove idleness.
"""

from __future__ import annotations

import threading
from collections import Counter as TallyCounter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PHASES = ("Pending", "Provisioning", "Healthy", "Updating", "Degraded", "FailingOver", "Fenced", "Failed")


@dataclass(frozen=True)
class ShardFacts:
    phase: str | None
    lag_seconds: float | None


@dataclass(frozen=True)
class ClusterFacts:
    proxies_ready: int
    proxies_desired: int


Facts = TypeVar("Facts")


class _LatestFacts(Collector, Generic[Facts]):
    """The latest facts of each live object, by (namespace, name), exported at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._facts: dict[tuple[str, str], Facts] = {}

    def update(self, namespace: str, name: str, facts: Facts) -> None:
        with self._lock:
            self._facts[(namespace, name)] = facts

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._facts.pop((namespace, name), None)

    def snapshot(self) -> list[tuple[tuple[str, str], Facts]]:
        with self._lock:
            return sorted(self._facts.items(), key=lambda item: item[0])


class _ShardCollector(_LatestFacts[ShardFacts]):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        facts = self.snapshot()
        by_phase = GaugeMetricFamily("mailshard_shards", "MailShards by phase.", labels=["phase"])
        tally = TallyCounter(f.phase for _key, f in facts if f.phase)
        for phase in PHASES:
            by_phase.add_metric([phase], tally.get(phase, 0))
        yield by_phase
        lag = GaugeMetricFamily(
            "mailshard_replication_lag_seconds",
            "Replication lag of each shard's replica, as its agent last reported it.",
            labels=["namespace", "shard"],
        )
        for (namespace, name), fact in facts:
            if fact.lag_seconds is not None:
                lag.add_metric([namespace, name], fact.lag_seconds)
        yield lag


class _ClusterCollector(_LatestFacts[ClusterFacts]):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        facts = self.snapshot()
        ready = GaugeMetricFamily(
            "mailshard_cluster_proxies_ready",
            "Proxy pods of each MailCluster that are ready (its status.proxiesReady).",
            labels=["namespace", "cluster"],
        )
        desired = GaugeMetricFamily(
            "mailshard_cluster_proxies_desired",
            "Proxy pods each MailCluster asks for (its spec.proxy.replicas).",
            labels=["namespace", "cluster"],
        )
        for (namespace, name), fact in facts:
            ready.add_metric([namespace, name], fact.proxies_ready)
            desired.add_metric([namespace, name], fact.proxies_desired)
        yield ready
        yield desired


class OperatorMetrics:
    """Every metric of one operator process, on its own registry (tests build their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.shards = _ShardCollector()
        self.registry.register(self.shards)
        self.clusters = _ClusterCollector()
        self.registry.register(self.clusters)
        self.failovers = Counter(
            "mailshard_failovers_total",
            "Replicas promoted to master, by reason.",
            ["namespace", "shard", "reason"],
            registry=self.registry,
        )
        self.failover_duration = Histogram(
            "mailshard_failover_duration_seconds",
            "Time from a master's loss to its replica serving.",
            buckets=(0.5, 1, 2, 3, 5, 7.5, 10, 15, 30, 60, 120),
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "mailshard_reconcile_duration_seconds",
            "Duration of one reconcile.",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "mailshard_reconcile_errors_total", "Reconciles that raised an error.", ["kind"], registry=self.registry
        )
        self.routing_version = Gauge(
            "mailshard_routing_table_version",
            "Version of each cluster's published routing table.",
            ["namespace", "cluster"],
            registry=self.registry,
        )
        self.routing_updated = Gauge(
            "mailshard_routing_table_updated_timestamp_seconds",
            "When each cluster's routing table last changed (Unix time).",
            ["namespace", "cluster"],
            registry=self.registry,
        )
        self.api_writes = Counter(
            "mailshard_api_writes_total",
            "Writes to the Kubernetes API, by verb and kind.",
            ["verb", "kind"],
            registry=self.registry,
        )


def serve_metrics(address: str, registry: CollectorRegistry) -> None:
    """Serve `registry` at http://`address`/metrics from a daemon thread; `address` is `[host]:port` (no host: all)."""
    host, _colon, port = address.rpartition(":")
    start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)
