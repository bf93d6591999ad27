"""The operator's /metrics tell the truth after a reconcile: shards by phase, reconciles, routing, writes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client
from operator_support import REPO, OperatorProcess, eventually, kubectl

from mailshard_harness.testing import Samples, sample, scrape

pytestmark = pytest.mark.integration


def test_metrics_after_a_reconcile(
    operator: OperatorProcess, api_client: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    assert operator.metrics_url is not None
    errors_before = sample(scrape(operator.metrics_url), "mailshard_reconcile_errors_total", kind="MailShard") or 0.0
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(REPO / "examples"))

    def both_healthy_and_routed() -> Samples | None:
        shards = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
            "mailshard.io", "v1alpha1", namespace, "mailshards"
        )["items"]
        healthy = [s for s in shards if (s.get("status") or {}).get("phase") == "Healthy"]
        # Scraped after the statuses were read: the gauges are set once a reconcile has written its status.
        samples = scrape(operator.metrics_url or "")
        routing = sample(samples, "mailshard_routing_table_version", namespace=namespace, cluster="demo")
        counted = sample(samples, "mailshard_shards", phase="Healthy") or 0
        return samples if len(healthy) == 2 and routing and counted >= 2 else None

    samples = eventually(both_healthy_and_routed, what="both example shards Healthy and a routing table published")
    # Shards by phase counts every shard the operator knows, across namespaces: ours are two of the Healthy.
    assert (sample(samples, "mailshard_shards", phase="Healthy") or 0) >= 2
    assert sample(samples, "mailshard_shards", phase="Degraded") is not None
    assert (sample(samples, "mailshard_reconcile_duration_seconds_count", kind="MailShard") or 0) > 0
    assert (sample(samples, "mailshard_reconcile_duration_seconds_count", kind="MailCluster") or 0) > 0
    # No reconcile failed while these shards were built (the counter is process-wide, hence the difference).
    assert (sample(samples, "mailshard_reconcile_errors_total", kind="MailShard") or 0.0) == errors_before
    version = sample(samples, "mailshard_routing_table_version", namespace=namespace, cluster="demo")
    assert version is not None
    assert version >= 1
    updated = sample(samples, "mailshard_routing_table_updated_timestamp_seconds", namespace=namespace, cluster="demo")
    assert updated is not None
    assert time.time() - 120 < updated <= time.time() + 1
    assert (sample(samples, "mailshard_api_writes_total", verb="apply", kind="StatefulSet") or 0) >= 4
    # No agent reports lag on KWOK nodes: the lag series is absent rather than a made-up 0.
    assert sample(samples, "mailshard_replication_lag_seconds", namespace=namespace, shard="dovecot-1") is None


def test_proxy_gauges_follow_the_cluster_status_and_go_with_the_cluster(
    operator: OperatorProcess, api_client: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    # The series MailClusterProxiesNotReady compares: the numbers of status.proxiesReady and spec.proxy.replicas.
    assert operator.metrics_url is not None
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(REPO / "examples" / "mailcluster.yaml"))
    objects = client.CustomObjectsApi(api_client)

    def gauges_match_the_status(replicas: int) -> Callable[[], bool]:
        def check() -> bool:
            samples = scrape(operator.metrics_url or "")
            ready = sample(samples, "mailshard_cluster_proxies_ready", namespace=namespace, cluster="demo")
            desired = sample(samples, "mailshard_cluster_proxies_desired", namespace=namespace, cluster="demo")
            cluster = objects.get_namespaced_custom_object(
                "mailshard.io", "v1alpha1", namespace, "mailclusters", "demo"
            )
            return desired == replicas and ready == (cluster.get("status") or {}).get("proxiesReady") == replicas

        return check

    eventually(gauges_match_the_status(2), what="2 of 2 proxies ready, in status and in the metrics")
    objects.patch_namespaced_custom_object(
        "mailshard.io", "v1alpha1", namespace, "mailclusters", "demo", {"spec": {"proxy": {"replicas": 3}}}
    )
    eventually(gauges_match_the_status(3), what="3 of 3 proxies ready, in status and in the metrics")
    kubectl(kubeconfig, "delete", "-n", namespace, "mailcluster", "demo")

    def series_gone() -> bool:
        samples = scrape(operator.metrics_url or "")
        return sample(samples, "mailshard_cluster_proxies_desired", namespace=namespace, cluster="demo") is None

    eventually(series_gone, what="the deleted cluster's proxy series to disappear")
