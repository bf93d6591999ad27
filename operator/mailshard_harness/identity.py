"""The operator's least-privilege identity on a harness cluster: a ServiceAccount and a kubeconfig for it.

The operator never runs as the harness admin, neither in tests nor in the
demo: it authenticates as a ServiceAccount bound to exactly the ClusterRole of
`mailshard.rbac`, so every run also proves that those permissions suffice.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml
from kubernetes import client

from mailshard import rbac

OPERATOR_NAMESPACE = "mailshard-system"
OPERATOR_ACCOUNT = "mailshard-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"


def install_operator_identity(api: client.ApiClient, admin_kubeconfig: Path, directory: Path) -> Path:
    """A ServiceAccount with the operator's ClusterRole, and a kubeconfig that authenticates as it."""
    core = client.CoreV1Api(api)
    authz = client.RbacAuthorizationV1Api(api)
    steps: tuple[Callable[[], object], ...] = (
        lambda: core.create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}}),
        lambda: core.create_namespaced_service_account(OPERATOR_NAMESPACE, {"metadata": {"name": OPERATOR_ACCOUNT}}),
        lambda: authz.create_cluster_role({"metadata": {"name": OPERATOR_ACCOUNT}, "rules": rbac.cluster_role_rules()}),
        lambda: authz.create_cluster_role_binding(
            {
                "metadata": {"name": OPERATOR_ACCOUNT},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": OPERATOR_ACCOUNT},
                "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NAMESPACE}],
            }
        ),
    )
    for create in steps:
        try:
            create()
        except client.ApiException as exc:
            if exc.status != 409:
                raise
    return service_account_kubeconfig(
        api, admin_kubeconfig, OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, directory / "operator.kubeconfig"
    )


def service_account_kubeconfig(
    api: client.ApiClient, admin_kubeconfig: Path, namespace: str, account: str, path: Path
) -> Path:
    """Writes `path`: a kubeconfig that authenticates as an existing ServiceAccount, with a TokenRequest token.

    The API server of `admin_kubeconfig`, a day-long token of `namespace/account`:
    what the account's pods would get, for running a process as that account from the host.
    """
    token = (
        client.CoreV1Api(api)
        .create_namespaced_service_account_token(account, namespace, {"spec": {"expirationSeconds": 86400}})
        .status.token
    )
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": cluster["name"], "user": account}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path
