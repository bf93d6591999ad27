"""What our processes really export, and which metric names and labels a PromQL expression refers to.

The chart's alerts and the Grafana dashboard are only worth something if they
query series that exist. Both are checked against registries built by the same
classes the operator and the routing sidecar serve, each instrument given one
sample, so a renamed metric or label fails a test instead of an alert that can
never fire. A new instrument that is not given a sample here fails too.
"""

from __future__ import annotations

import datetime
import re

from mailshard.api.routing import RoutingTable, as_written_at
from mailshard.metrics import ClusterFacts, OperatorMetrics, ShardFacts
from mailshard.proxy.metrics import SidecarMetrics

_METRIC = re.compile(r"\b(mailshard_[a-z_]+)")
_MATCHERS = re.compile(r"\b(mailshard_[a-z_]+)\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def exported_samples() -> dict[str, set[str]]:
    """Sample name → its label names, over every metric the operator and the routing sidecar export."""
    operator = OperatorMetrics()
    operator.failovers.labels(namespace="n", shard="s", reason="r").inc()
    operator.failover_duration.observe(1)
    operator.reconcile_duration.labels(kind="MailShard").observe(0.1)
    operator.reconcile_errors.labels(kind="MailShard").inc()
    operator.routing_version.labels(namespace="n", cluster="c").set(1)
    operator.routing_updated.labels(namespace="n", cluster="c").set(1)
    operator.api_writes.labels(verb="apply", kind="StatefulSet").inc()
    operator.shards.update("n", "s", ShardFacts(phase="Healthy", lag_seconds=0.5))
    operator.clusters.update("n", "c", ClusterFacts(proxies_ready=1, proxies_desired=2))
    sidecar = SidecarMetrics("n", "c")
    written = as_written_at(datetime.datetime.now(datetime.UTC))
    table = RoutingTable(version=2, slots=(None,), written_at=written)
    sidecar.applied(table, replaced=RoutingTable(version=1, slots=(None,)), at=written.timestamp() + 0.2)
    sidecar.refused()
    names: dict[str, set[str]] = {}
    for registry in (operator.registry, sidecar.registry):
        for family in registry.collect():
            assert family.samples, f"{family.name} has no sample: give it one in exported_samples()"
            for sample in family.samples:
                names.setdefault(sample.name, set()).update(sample.labels)
    return names


def unknown_references(expression: str, samples: dict[str, set[str]]) -> list[str]:
    """What `expression` queries that nobody exports: metric names, and labels matched or grouped by."""
    used = set(_METRIC.findall(expression))
    if not used:
        return [f"no mailshard metric in {expression!r}"]
    problems = [f"{name} is not exported" for name in sorted(used - samples.keys())]
    for name, matchers in _MATCHERS.findall(expression):
        for label in _MATCHER_LABEL.findall(matchers):
            if name in samples and label not in samples[name]:
                problems.append(f"{name} has no label {label!r}")
    for group in _GROUPING.findall(expression):
        for label in (part.strip() for part in group.split(",")):
            if label:
                known = sorted(used & samples.keys())
                problems += [f"{name} has no label {label!r}" for name in known if label not in samples[name]]
    return problems
