"""The Grafana dashboard queries only metrics the operator and the routing sidecar really export, with their labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exported_metrics import exported_samples, unknown_references

pytestmark = pytest.mark.unit

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "mailshard-dashboard.json"


def test_every_query_uses_exported_metrics_and_labels() -> None:
    samples = exported_samples()
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert expressions
    for expression in expressions:
        assert unknown_references(expression, samples) == [], expression


def test_the_check_catches_a_wrong_name_or_label() -> None:
    samples = exported_samples()
    assert unknown_references("sum by (shard) (mailshard_shards)", samples) == ["mailshard_shards has no label 'shard'"]
    assert unknown_references('mailshard_shard{phase="Healthy"}', samples) == ["mailshard_shard is not exported"]
    assert unknown_references('mailshard_shards{phas="Healthy"}', samples) == ["mailshard_shards has no label 'phas'"]
    assert unknown_references("up", samples) == ["no mailshard metric in 'up'"]


def test_the_namespace_variable_reads_a_label_that_exists() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "namespace")
    assert "namespace" in exported_samples()["mailshard_replication_lag_seconds"]
    assert "mailshard_replication_lag_seconds" in variable["query"]["query"]
