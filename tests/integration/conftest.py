"""Fixtures for the integration tier: API clients on the session's control plane, one namespace per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from operator_support import (
    REPO,
    AuditLog,
    OperatorProcess,
    eventually,
    free_port,
    install_operator_identity,
    kubectl,
)
from pair_support import require_mail, running_pair

from mailshard_harness import local_agents
from mailshard_harness.cluster import ControlPlane


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(kubeconfig))
    yield api
    api.close()


@pytest.fixture(scope="session")
def crds(kubeconfig: Path, api_client: client.ApiClient) -> None:
    """Our CRDs from crds/, applied as a user would and Established."""
    kubectl(kubeconfig, "apply", "--server-side", "-f", str(REPO / "crds"))
    extensions = client.ApiextensionsV1Api(api_client)
    for name in ("mailshards.mailshard.io", "mailclusters.mailshard.io"):
        eventually(
            lambda name=name: any(
                c.type == "Established" and c.status == "True"
                for c in extensions.read_custom_resource_definition(name).status.conditions or []
            ),
            what=f"CRD {name} established",
        )


@pytest.fixture(scope="session")
def operator(
    crds: None, api_client: client.ApiClient, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator running for the whole session under its least-privilege identity."""
    directory = tmp_path_factory.mktemp("operator")
    identity = install_operator_identity(api_client, kubeconfig, directory)
    metrics_port = free_port()
    process = OperatorProcess(
        identity,
        directory / "operator.log",
        resync_seconds=3,
        args=("--standalone", "--liveness", "", "--metrics-address", f"127.0.0.1:{metrics_port}"),
    )
    process.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    process.start()
    eventually(process.serving_metrics, what="the operator serving /metrics")
    yield process
    process.stop()


@pytest.fixture(scope="session")
def audit(harness: ControlPlane) -> AuditLog:
    return AuditLog(harness.audit_log)


@pytest.fixture
def mail_available() -> None:
    require_mail()


@pytest.fixture
def pair(
    mail_available: None, api_client: client.ApiClient, kubeconfig: Path, namespace: str, request: pytest.FixtureRequest
) -> Iterator[local_agents.LocalPair]:
    """The example Dovecot shard with real agents in its pods' places, in sync; `indirect` False disables failover."""
    with running_pair(
        api_client, kubeconfig, namespace, request, failover_enabled=getattr(request, "param", True)
    ) as started:
        yield started
