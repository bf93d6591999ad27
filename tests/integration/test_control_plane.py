"""The harness gives a real control plane: CRDs, StatefulSets, local PVs honoured by the real scheduler."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from mailshard_harness import build, versions
from mailshard_harness.storage import STORAGE_CLASS_NAME
from mailshard_harness.testing import eventually

pytestmark = pytest.mark.integration


def kubectl(kubeconfig: Path, *args: str) -> str:
    binary = build.bin_path(versions.KUBECTL_BINARY)
    return subprocess.run(
        [str(binary), f"--kubeconfig={kubeconfig}", *args], check=True, capture_output=True, text=True
    ).stdout


WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.harness.mailshard.io"},
    "spec": {
        "group": "harness.mailshard.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wdg"]},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                ],
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"size": {"type": "integer", "minimum": 1}},
                                "required": ["size"],
                            },
                            "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                        },
                    }
                },
            }
        ],
    },
}


def test_custom_resource_with_status_subresource_and_printer_columns(
    api_client: client.ApiClient, namespace: str, kubeconfig: Path
) -> None:
    extensions = client.ApiextensionsV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    try:
        extensions.create_custom_resource_definition(WIDGET_CRD)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    eventually(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in extensions.read_custom_resource_definition("widgets.harness.mailshard.io").status.conditions or []
        ),
        what="CRD established",
    )
    widget = {
        "apiVersion": "harness.mailshard.io/v1",
        "kind": "Widget",
        "metadata": {"name": "w1"},
        "spec": {"size": 3},
    }
    eventually(
        lambda: custom.create_namespaced_custom_object("harness.mailshard.io", "v1", namespace, "widgets", widget),
        what="the CR to be accepted",
    )
    # A status write through the subresource sticks; a status in the main resource is ignored.
    custom.patch_namespaced_custom_object_status(
        "harness.mailshard.io", "v1", namespace, "widgets", "w1", {"status": {"phase": "Ready"}}
    )
    custom.patch_namespaced_custom_object(
        "harness.mailshard.io", "v1", namespace, "widgets", "w1", {"status": {"phase": "Ignored"}}
    )
    table = kubectl(kubeconfig, "get", "widgets", "-n", namespace)
    assert table.split("\n")[0].split() == ["NAME", "SIZE", "PHASE"]
    assert table.split("\n")[1].split() == ["w1", "3", "Ready"]

    with pytest.raises(client.ApiException) as rejected:
        custom.create_namespaced_custom_object(
            "harness.mailshard.io",
            "v1",
            namespace,
            "widgets",
            {**widget, "metadata": {"name": "w2"}, "spec": {"size": 0}},
        )
    assert rejected.value.status == 422
    assert "spec.size" in rejected.value.body


def member_statefulset(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "serviceName": name,
            "replicas": 2,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "affinity": {
                        "podAntiAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": [
                                {"labelSelector": {"matchLabels": labels}, "topologyKey": "kubernetes.io/hostname"}
                            ]
                        }
                    },
                    "containers": [
                        {
                            "name": "store",
                            "image": "example.invalid/store:1",
                            "volumeMounts": [{"name": "mail", "mountPath": "/var/mail"}],
                        }
                    ],
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "mail"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": STORAGE_CLASS_NAME,
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                }
            ],
        },
    }


def test_statefulset_on_local_volumes_keeps_each_pod_on_its_volume_node(
    api_client: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(api_client)
    core = client.CoreV1Api(api_client)
    apps.create_namespaced_stateful_set(namespace, member_statefulset("pair"))

    def running_pods() -> dict[str, str] | None:
        pods = core.list_namespaced_pod(namespace, label_selector="app=pair").items
        if len(pods) == 2 and all(p.status.phase == "Running" and p.spec.node_name for p in pods):
            return {p.metadata.name: p.spec.node_name for p in pods}
        return None

    placement = eventually(running_pods, what="both pods Running")
    assert len(set(placement.values())) == 2, f"anti-affinity violated: {placement}"

    claims = {c.metadata.name: c for c in core.list_namespaced_persistent_volume_claim(namespace).items}
    assert set(claims) == {"mail-pair-0", "mail-pair-1"}
    volume_node: dict[str, str] = {}
    for pod_name in placement:
        claim = claims[f"mail-{pod_name}"]
        assert claim.status.phase == "Bound"
        volume = core.read_persistent_volume(claim.spec.volume_name)
        terms = volume.spec.node_affinity.required.node_selector_terms
        volume_node[pod_name] = terms[0].match_expressions[0].values[0]
    assert volume_node == placement, "each pod must run on the node that holds its volume"

    # A deleted pod comes back on the same node as its PV, whatever else is free.
    victim = "pair-1"
    old_uid = core.read_namespaced_pod(victim, namespace).metadata.uid
    core.delete_namespaced_pod(victim, namespace, grace_period_seconds=0)

    def recreated() -> str | None:
        pod = core.read_namespaced_pod(victim, namespace)
        if pod.metadata.uid != old_uid and pod.status.phase == "Running":
            return str(pod.spec.node_name)
        return None

    assert eventually(recreated, what="the pod recreated") == placement[victim]
