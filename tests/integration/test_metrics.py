"""The operator's /metrics tell the truth after a reconcile: shards by phase, reconciles, routing, writes."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client
from operator_support import REPO, OperatorProcess, eventually, kubectl
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_after_a_reconcile(
    operator: OperatorProcess, api_client: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    assert operator.metrics_url is not None
    errors_before = value(scrape(operator.metrics_url), "mailshard_reconcile_errors_total", kind="MailShard") or 0.0
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(REPO / "examples"))

    def both_healthy_and_routed() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        samples = scrape(operator.metrics_url or "")
        routing = value(samples, "mailshard_routing_table_version", namespace=namespace, cluster="demo")
        shards = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
            "mailshard.io", "v1alpha1", namespace, "mailshards"
        )["items"]
        healthy = [s for s in shards if (s.get("status") or {}).get("phase") == "Healthy"]
        return samples if len(healthy) == 2 and routing else None

    samples = eventually(both_healthy_and_routed, what="both example shards Healthy and a routing table published")
    # Shards by phase counts every shard the operator knows, across namespaces: ours are two of the Healthy.
    assert (value(samples, "mailshard_shards", phase="Healthy") or 0) >= 2
    assert value(samples, "mailshard_shards", phase="Degraded") is not None
    assert (value(samples, "mailshard_reconcile_duration_seconds_count", kind="MailShard") or 0) > 0
    assert (value(samples, "mailshard_reconcile_duration_seconds_count", kind="MailCluster") or 0) > 0
    # No reconcile failed while these shards were built (the counter is process-wide, hence the difference).
    assert (value(samples, "mailshard_reconcile_errors_total", kind="MailShard") or 0.0) == errors_before
    version = value(samples, "mailshard_routing_table_version", namespace=namespace, cluster="demo")
    assert version is not None
    assert version >= 1
    updated = value(samples, "mailshard_routing_table_updated_timestamp_seconds", namespace=namespace, cluster="demo")
    assert updated is not None
    assert time.time() - 120 < updated <= time.time() + 1
    assert (value(samples, "mailshard_api_writes_total", verb="apply", kind="StatefulSet") or 0) >= 4
    # No agent reports lag on KWOK nodes: the lag series is absent rather than a made-up 0.
    assert value(samples, "mailshard_replication_lag_seconds", namespace=namespace, shard="dovecot-1") is None
