"""The Grafana dashboard queries only metrics the operator really exports, with the labels they carry."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mailshard.metrics import OperatorMetrics

pytestmark = pytest.mark.unit

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "mailshard-dashboard.json"
_METRIC = re.compile(r"\b(mailshard_[a-z_]+)")
_BY = re.compile(r"by \(([^)]*)\)")


def exported() -> dict[str, set[str]]:
    """Sample name → label names, from a registry with one sample of everything."""
    metrics = OperatorMetrics()
    metrics.failovers.labels(namespace="n", shard="s", reason="r").inc()
    metrics.failover_duration.observe(1)
    metrics.reconcile_duration.labels(kind="MailShard").observe(0.1)
    metrics.reconcile_errors.labels(kind="MailShard").inc()
    metrics.routing_version.labels(namespace="n", cluster="c").set(1)
    metrics.routing_updated.labels(namespace="n", cluster="c").set(1)
    metrics.api_writes.labels(verb="apply", kind="StatefulSet").inc()
    from mailshard.metrics import ShardFacts

    metrics.shards.update("n", "s", ShardFacts(phase="Healthy", lag_seconds=0.5))
    names: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def test_every_query_uses_exported_metrics_and_labels() -> None:
    samples = exported()
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert expressions
    for expression in expressions:
        used = _METRIC.findall(expression)
        assert used, expression
        for name in used:
            assert name in samples, f"{name} is not exported by the operator ({expression})"
            for group in _BY.findall(expression):
                for label in (part.strip() for part in group.split(",")):
                    assert label == "le" or label in samples[name], f"{name} has no label {label!r}"


def test_the_namespace_variable_reads_a_label_that_exists() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "namespace")
    assert "namespace" in exported()["mailshard_replication_lag_seconds"]
    assert "mailshard_replication_lag_seconds" in variable["query"]["query"]
