"""The routing sidecar's own Prometheus metrics: which table each proxy routes with, and how late it got it.

The operator's metrics say which routing table it published; only the proxies
can say when they took it. Each sidecar serves these on its pod's `metrics`
port (`--metrics-address`), one registry per process:

- `mailshard_proxy_routing_table_version{namespace,cluster}`: the version in force
  (after a restart of the sidecar alone, the one it had applied before).
- `mailshard_proxy_routing_table_applied_timestamp_seconds{namespace,cluster}`: when
  the sidecar last put a new version in force (Unix time).
- `mailshard_proxy_route_propagation_seconds{namespace,cluster}`: for each new
  version taken while running, the time it was applied minus the table's own
  `writtenAt` (the operator's write). The first table after a start is not a
  propagation and is not observed, nor is a table without `writtenAt`. The two
  clocks are the operator's and the proxy's nodes'; a negative difference
  (skew) counts as 0.
- `mailshard_proxy_routing_tables_refused_total{namespace,cluster}`: documents
  refused (malformed, or older than the table in force).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mailshard.api.routing import RoutingTable

PROPAGATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
"""Seconds; the goal is a failover reaching every proxy within 1 s."""


class SidecarMetrics:
    """The metrics of one routing sidecar, following one cluster's table, on its own registry."""

    def __init__(self, namespace: str, cluster: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ["namespace", "cluster"]
        self._version = Gauge(
            "mailshard_proxy_routing_table_version",
            "Version of the routing table this proxy routes with.",
            labels,
            registry=self.registry,
        )
        self._applied = Gauge(
            "mailshard_proxy_routing_table_applied_timestamp_seconds",
            "When this proxy last put a new routing table version in force (Unix time).",
            labels,
            registry=self.registry,
        )
        self._propagation = Histogram(
            "mailshard_proxy_route_propagation_seconds",
            "Time from the operator writing a routing table version to this proxy applying it.",
            labels,
            buckets=PROPAGATION_BUCKETS,
            registry=self.registry,
        )
        self._refused = Counter(
            "mailshard_proxy_routing_tables_refused_total",
            "Routing table documents this proxy refused (malformed, or older than the one in force).",
            labels,
            registry=self.registry,
        )
        self._labels = {"namespace": namespace, "cluster": cluster}
        # Counted from zero at start, so rate() and increase() see the first event; the gauges wait for a table.
        self._propagation.labels(**self._labels)
        self._refused.labels(**self._labels)

    def applied(self, table: RoutingTable, *, replaced: RoutingTable | None, at: float) -> None:
        """`table` was put in force at `at` (Unix time), replacing `replaced` (None: the first after a start)."""
        self._version.labels(**self._labels).set(table.version)
        self._applied.labels(**self._labels).set(at)
        if replaced is not None and table.written_at is not None:
            self._propagation.labels(**self._labels).observe(max(0.0, at - table.written_at.timestamp()))

    def restored(self, table: RoutingTable, *, at: float) -> None:
        """`table`, applied at `at` before this start, is still in force (the sidecar restarted, not its pod)."""
        self._version.labels(**self._labels).set(table.version)
        self._applied.labels(**self._labels).set(at)

    def refused(self) -> None:
        self._refused.labels(**self._labels).inc()
