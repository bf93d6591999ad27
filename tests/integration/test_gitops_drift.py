"""The GitOps promise: once the operator has made the examples Ready, applying them again would change nothing.

Flux and Argo CD apply the manifests in Git server-side and show any difference
as drift (OutOfSync); an operator that rewrote a field of the user's objects
would keep them out of sync for ever. `kubectl diff --server-side` asks the API
server what a server-side apply of the same files would change now.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from operator_support import REPO, OperatorProcess, eventually, kubectl

pytestmark = pytest.mark.integration

GROUP, VERSION = "mailshard.io", "v1alpha1"
MANAGER = "gitops"
"""The field manager a GitOps controller applies with (Flux: kustomize-controller, Argo CD: argocd-controller)."""


def custom(api_client: client.ApiClient, namespace: str, plural: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, name
    )
    return body


def ready_and_observed(body: dict[str, Any]) -> bool:
    status = body.get("status") or {}
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
    return ready and status.get("observedGeneration") == body["metadata"]["generation"]


def server_side_diff(kubeconfig: Path, namespace: str, path: Path) -> Any:
    return kubectl(
        kubeconfig, "diff", "--server-side", f"--field-manager={MANAGER}", "-n", namespace, "-f", str(path), check=False
    )


def test_the_examples_show_no_diff_once_ready(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    examples = REPO / "examples"
    kubectl(kubeconfig, "apply", "--server-side", f"--field-manager={MANAGER}", "-n", namespace, "-f", str(examples))
    ours = [
        (document["kind"], document["metadata"]["name"])
        for path in sorted(examples.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document and document["apiVersion"].startswith(f"{GROUP}/")
    ]
    plurals = {"MailShard": "mailshards", "MailCluster": "mailclusters"}
    for kind, name in ours:
        eventually(
            lambda kind=kind, name=name: ready_and_observed(custom(api_client, namespace, plurals[kind], name)),
            timeout=120,
            what=f"{kind} {name} Ready",
        )
    time.sleep(2 * operator.resync_seconds + 1)  # periodic resyncs too must leave the user's fields alone

    unchanged = server_side_diff(kubeconfig, namespace, examples)
    assert unchanged.returncode == 0, f"drift after the operator's reconciles:\n{unchanged.stdout}{unchanged.stderr}"
    assert unchanged.stdout == ""
    for kind, name in ours:
        assert custom(api_client, namespace, plurals[kind], name)["metadata"]["generation"] == 1, (kind, name)

    # The same check sees a real difference: one field of the cluster changed in "Git".
    documents = [d for d in yaml.safe_load_all((examples / "mailcluster.yaml").read_text()) if d]
    (edited,) = [d for d in documents if d["kind"] == "MailCluster"]
    edited["spec"]["proxy"]["replicas"] += 1
    changed_file = tmp_path / "mailcluster.yaml"
    changed_file.write_text(yaml.safe_dump_all(documents))
    changed = server_side_diff(kubeconfig, namespace, changed_file)
    assert changed.returncode == 1, changed.stderr
    assert f"replicas: {edited['spec']['proxy']['replicas']}" in changed.stdout
