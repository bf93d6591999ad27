"""The operator, running for real, builds each MailCluster's proxy tier and keeps it as built.

The proxy pods are KWOK's (no containers run), so what is proven here is the
control plane's side: the Deployment, Service, budget and the pods' own
identity exist and are reverted when edited; the cluster's status counts ready
proxies; a spec the API refuses becomes a condition, not a crash loop; and the
identity is least privilege, checked by the real RBAC authoriser, with the real
routing sidecar following the table as that identity. The containers' command
lines are run as real processes by the mail tier (`mailshard_harness.local_proxy`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from operator_support import REPO, eventually, kubectl

from mailshard.api import proxy_pod
from mailshard.api.routing import TABLE_KEY, parse_table
from mailshard.proxy.sidecar import watch
from mailshard_harness.identity import service_account_kubeconfig

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("operator")]

GROUP, VERSION = "mailshard.io", "v1alpha1"
PROXY = "demo-proxy"


def apply_examples(kubeconfig: Path, namespace: str) -> None:
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(REPO / "examples"))


def cluster_status(api_client: client.ApiClient, namespace: str) -> dict[str, Any]:
    body = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "mailclusters", "demo"
    )
    return dict(body.get("status") or {})


def condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), None)


def reasons(api_client: client.ApiClient, namespace: str) -> list[str]:
    events = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    return [f"{e.reason}: {e.message}" for e in events if e.involved_object.kind == "MailCluster"]


def test_a_cluster_gets_its_proxy_tier_and_counts_ready_proxies(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    apply_examples(kubeconfig, namespace)
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    deployment = eventually(lambda: _get(apps.read_namespaced_deployment, namespace), what="the proxy Deployment")
    assert deployment.spec.replicas == 2
    assert deployment.metadata.owner_references[0].kind == "MailCluster"
    assert [c.name for c in deployment.spec.template.spec.containers] == ["proxy", "routing"]
    service = core.read_namespaced_service(PROXY, namespace)
    assert {p.name: p.port for p in service.spec.ports} == {"imap": 143, "pop3": 110, "lmtp": 24, "managesieve": 4190}
    assert core.read_namespaced_service_account(PROXY, namespace).metadata.owner_references[0].name == "demo"
    assert (
        client.PolicyV1Api(api_client).read_namespaced_pod_disruption_budget(PROXY, namespace).spec.max_unavailable == 1
    )

    def ready() -> dict[str, Any] | None:
        status = cluster_status(api_client, namespace)
        ready_condition = condition(status, "Ready")
        if status.get("proxiesReady") != 2 or ready_condition is None or ready_condition["status"] != "True":
            return None
        return status

    status = eventually(ready, timeout=120, what="both proxies ready and the cluster Ready")
    assert condition(status, "Ready")["message"] == "2 of 2 shards ready, 2 of 2 proxies ready"
    assert any(r.startswith("Created: created ServiceAccount/demo-proxy") for r in reasons(api_client, namespace))
    columns = kubectl(kubeconfig, "get", "mailclusters", "-n", namespace).stdout.splitlines()
    assert columns[0].split()[:5] == ["NAME", "SHARDS", "READY", "PROXIES", "ROUTING-VERSION"]
    assert columns[1].split()[3] == "2"

    # Scaling the tier in the spec reaches the Deployment; none ready counts as not serving.
    patch = {"spec": {"proxy": {"replicas": 0}}}
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "mailclusters", "demo", patch
    )
    eventually(
        lambda: apps.read_namespaced_deployment(PROXY, namespace).spec.replicas == 0 or None,
        what="the Deployment scaled to 0",
    )
    eventually(lambda: cluster_status(api_client, namespace).get("proxiesReady") == 0 or None, what="0 proxies ready")


def test_edits_to_the_proxy_tier_are_reverted(api_client: client.ApiClient, kubeconfig: Path, namespace: str) -> None:
    apply_examples(kubeconfig, namespace)
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    eventually(lambda: _get(apps.read_namespaced_deployment, namespace), what="the proxy Deployment")
    apps.patch_namespaced_deployment(PROXY, namespace, {"spec": {"replicas": 5}})
    core.delete_namespaced_service(PROXY, namespace)
    eventually(
        lambda: apps.read_namespaced_deployment(PROXY, namespace).spec.replicas == 2 or None,
        what="the edited replica count reverted",
    )
    eventually(lambda: _get(core.read_namespaced_service, namespace), what="the deleted Service recreated")
    found = eventually(
        lambda: [r for r in reasons(api_client, namespace) if r.startswith("DriftReverted")] or None,
        what="a DriftReverted Event",
    )
    assert "Deployment/demo-proxy (.spec.replicas)" in " ".join(found)


def test_a_service_the_api_refuses_stalls_the_cluster_with_the_apis_reason(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    apply_examples(kubeconfig, namespace)
    patch = {"spec": {"proxy": {"service": {"annotations": {"not a valid key!": "x"}}}}}
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "mailclusters", "demo", patch
    )

    def stalled() -> dict[str, Any] | None:
        found = condition(cluster_status(api_client, namespace), "Stalled")
        return found if found is not None and found["status"] == "True" else None

    found = eventually(stalled, what="Stalled for the refused Service")
    assert found["reason"] == "InvalidSpec"
    assert "the API refused the proxy tier" in found["message"]
    assert "not a valid key!" in found["message"]
    # The routing table is published regardless: proxies that already run keep following failovers.
    assert client.CoreV1Api(api_client).read_namespaced_config_map("demo-routing", namespace).data[TABLE_KEY]
    patch = {"spec": {"proxy": {"service": {"annotations": None}}}}
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "mailclusters", "demo", patch
    )
    eventually(
        lambda: (condition(cluster_status(api_client, namespace), "Stalled") or {}).get("status") == "False" or None,
        what="Stalled cleared once the spec is fixed",
    )


def test_the_proxies_identity_reads_its_routing_table_and_nothing_else(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    apply_examples(kubeconfig, namespace)
    core = client.CoreV1Api(api_client)
    rbac = client.RbacAuthorizationV1Api(api_client)
    eventually(lambda: _get(rbac.read_namespaced_role_binding, namespace), what="the RoleBinding")
    eventually(lambda: _get(core.read_namespaced_config_map, namespace, "demo-routing"), what="the table")
    identity = service_account_kubeconfig(api_client, kubeconfig, namespace, PROXY, tmp_path / "proxy.kubeconfig")

    def allowed(verb: str, resource: str, name: str | None = None) -> bool:
        review = {
            "spec": {
                "user": f"system:serviceaccount:{namespace}:{PROXY}",
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                "resourceAttributes": {"namespace": namespace, "verb": verb, "resource": resource, "name": name},
            }
        }
        result = client.AuthorizationV1Api(api_client).create_subject_access_review(review)
        return bool(result.status.allowed)

    for verb in ("get", "list", "watch"):
        assert allowed(verb, "configmaps", "demo-routing")
    assert not allowed("get", "configmaps", "dovecot-1")
    assert not allowed("list", "configmaps")
    assert not allowed("update", "configmaps", "demo-routing")
    assert not allowed("get", "secrets", "dovecot-1-replication")
    assert not allowed("list", "pods")

    # The real sidecar, authenticated as the proxies' ServiceAccount, follows the table into a route file.
    routes = proxy_pod.routes_file(tmp_path)
    routes.parent.mkdir(parents=True)
    stop = threading.Event()
    sidecar = threading.Thread(
        target=watch,
        kwargs={
            "cluster": "demo",
            "namespace": namespace,
            "routes_file": routes,
            "doveadm": lambda args: "",  # no proxy process here: nobody to kick
            "kubeconfig": str(identity),
            "stop": stop.is_set,
        },
        daemon=True,
    )
    sidecar.start()
    try:
        version = parse_table(core.read_namespaced_config_map("demo-routing", namespace).data[TABLE_KEY]).version
        text = eventually(
            lambda: routes.read_text() if routes.exists() else None, what="the sidecar's route file", timeout=30
        )
        written = next(int(line.split()[1]) for line in text.splitlines() if line.startswith("version "))
        assert written >= version
    finally:
        stop.set()


def _get(read: Any, namespace: str, name: str = PROXY) -> Any:
    try:
        return read(name, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
