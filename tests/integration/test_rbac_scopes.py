"""The operator's permissions by scope: with listed namespaces, Roles there suffice and other Secrets are out of reach.

The chart tests prove that `watchNamespaces` renders exactly `rbac.cluster_role_rules(every_namespace=False)`
in the ClusterRole and `rbac.role_rules()` in a Role per namespace; here the real API server's RBAC
authoriser proves that those rules are enough for the operator to build the examples, and nothing more:
the session's cluster-wide operator is stopped meanwhile, so only the namespaced one acts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from operator_support import REPO, AuditLog, OperatorProcess, eventually, kubectl

from mailshard import rbac
from mailshard_harness.identity import OPERATOR_NAMESPACE, service_account_kubeconfig

pytestmark = pytest.mark.integration

ACCOUNT = "scoped-operator"
GROUP, VERSION = "mailshard.io", "v1alpha1"


@pytest.fixture
def scoped_identity(api_client: client.ApiClient, kubeconfig: Path, namespace: str, tmp_path: Path) -> Iterator[Path]:
    """A ServiceAccount with the cluster-scoped rules cluster-wide and the namespaced rules in `namespace` only."""
    core, authz = client.CoreV1Api(api_client), client.RbacAuthorizationV1Api(api_client)
    cluster_name = f"{ACCOUNT}-{namespace}"
    subject = {"kind": "ServiceAccount", "name": ACCOUNT, "namespace": namespace}
    core.create_namespaced_service_account(namespace, {"metadata": {"name": ACCOUNT}})
    authz.create_cluster_role(
        {"metadata": {"name": cluster_name}, "rules": rbac.cluster_role_rules(every_namespace=False)}
    )
    authz.create_cluster_role_binding(
        {
            "metadata": {"name": cluster_name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name},
            "subjects": [subject],
        }
    )
    authz.create_namespaced_role(namespace, {"metadata": {"name": ACCOUNT}, "rules": rbac.role_rules()})
    authz.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": ACCOUNT},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ACCOUNT},
            "subjects": [subject],
        },
    )
    try:
        yield service_account_kubeconfig(api_client, kubeconfig, namespace, ACCOUNT, tmp_path / "scoped.kubeconfig")
    finally:
        authz.delete_cluster_role_binding(cluster_name)
        authz.delete_cluster_role(cluster_name)


def allowed(api_client: client.ApiClient, user: str, verb: str, resource: str, namespace: str) -> bool:
    review = {
        "spec": {
            "user": user,
            "resourceAttributes": {"namespace": namespace, "verb": verb, "resource": resource, "name": "anything"},
        }
    }
    return bool(client.AuthorizationV1Api(api_client).create_subject_access_review(review).status.allowed)


def ready(api_client: client.ApiClient, namespace: str, plural: str, name: str) -> bool:
    try:
        body = client.CustomObjectsApi(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    except client.ApiException:
        return False
    conditions = (body.get("status") or {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_an_operator_watching_one_namespace_builds_it_with_the_roles_there_and_reads_no_other_secret(
    api_client: client.ApiClient,
    kubeconfig: Path,
    namespace: str,
    scoped_identity: Path,
    *,
    operator: OperatorProcess,
    audit: AuditLog,
    tmp_path: Path,
) -> None:
    user = f"system:serviceaccount:{namespace}:{ACCOUNT}"
    assert allowed(api_client, user, "get", "secrets", namespace)
    for elsewhere in ("default", OPERATOR_NAMESPACE, "kube-system"):
        assert not allowed(api_client, user, "get", "secrets", elsewhere), elsewhere
        assert not allowed(api_client, user, "list", "mailshards", elsewhere), elsewhere
    assert not allowed(api_client, user, "list", "secrets", namespace)
    assert not allowed(api_client, user, "watch", "secrets", namespace)

    scoped = OperatorProcess(
        scoped_identity,
        tmp_path / "scoped-operator.log",
        resync_seconds=3,
        args=("--standalone", "--namespace", namespace, "--liveness", ""),
    )
    operator.stop()  # only the namespaced operator may act now
    try:
        scoped.start()
        mark = audit.mark()
        kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(REPO / "examples"))
        for plural, name in (("mailshards", "dovecot-1"), ("mailshards", "cyrus-1"), ("mailclusters", "demo")):
            eventually(lambda p=plural, n=name: ready(api_client, namespace, p, n), what=f"{name} Ready", timeout=120)
        writes = audit.writes(user=user, namespace=namespace, since=mark)
        for written in ("secrets/dovecot-1-replication", "roles/demo-proxy", "statefulsets/dovecot-1-a"):
            assert any(write.endswith(written) for write in writes), (written, writes)
        scoped.assert_running()
        log = scoped.log.read_text()
        assert "Forbidden" not in log
        assert "Not enough permissions" not in log
    finally:
        scoped.stop()
        operator.start()
