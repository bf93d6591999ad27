"""Helpers of the e2e tier: manifests for small test workloads, waiting, and running commands in pods.

The same helpers work on the machine's real node and on kind, so they use only
the Kubernetes API (exec goes through the apiserver to the kubelet, as
`kubectl exec` does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from mailshard_harness.client_pod import pod_exec as run_in_pod
from mailshard_harness.testing import eventually

IMAGE = "mailshard/dovecot:0.1.0"
"""Our Dovecot image; it also carries Debian's python3 and libc's getent, which the checks use."""


__all__ = ["Cluster", "eventually", "run_in_pod"]


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    node_subnet: str | None
    """The real node's pod subnet; None on an external cluster (kind), whose pod network we do not know."""


def pod_ready(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod | None:
    pod = core.read_namespaced_pod(name, namespace)
    conditions = pod.status.conditions or []
    return pod if any(c.type == "Ready" and c.status == "True" for c in conditions) else None


def pod(name: str, command: list[str], *, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            # Root inside the pod: these workloads test the node (network, DNS, volumes), not our images' users.
            "securityContext": {"runAsUser": 0, "runAsGroup": 0},
            "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never", "command": command}],
        },
    }


def service(name: str, selector: dict[str, str], port: int, target: int, *, headless: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": selector, "ports": [{"name": "p", "port": port, "targetPort": target}]}
    if headless:
        spec["clusterIP"] = "None"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


DOVECOT_CONF = """\
# Just enough for IMAP on a volume: plaintext logins (no TLS inside a test cluster), one static password.
protocols = imap
listen = *
ssl = no
disable_plaintext_auth = no
base_dir = /run/dovecot
log_path = /dev/stderr
mail_location = maildir:/data/mail/%u
default_login_user = dovenull
default_internal_user = dovecot
passdb {
  driver = static
  args = password=e2e-secret
}
userdb {
  driver = static
  args = uid=vmail gid=vmail home=/data/mail/%u
}
"""


def mail_statefulset(name: str, *, replicas: int = 2, storage: str = "64Mi") -> list[dict[str, Any]]:
    """A StatefulSet of our Dovecot image serving IMAP from a per-pod volume, its ConfigMap and headless Service.

    On first start each pod writes its own UID to the volume, so a recreated pod
    can tell whether it got the same volume back.
    """
    labels = {"app": name}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"dovecot.conf": DOVECOT_CONF}},
        service(name, labels, 143, 143, headless=True),
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": name},
            "spec": {
                "serviceName": name,
                "replicas": replicas,
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        # A plain Dovecot started as root, as its Debian package expects; our image's user is 10001.
                        "securityContext": {"runAsUser": 0, "runAsGroup": 0},
                        "containers": [
                            {
                                "name": "dovecot",
                                "image": IMAGE,
                                "imagePullPolicy": "Never",
                                "command": [
                                    "sh",
                                    "-c",
                                    '[ -s /data/first-pod-uid ] || echo "$POD_UID" > /data/first-pod-uid; '
                                    "exec dovecot -F -c /etc/e2e-dovecot/dovecot.conf",
                                ],
                                "env": [{"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}],
                                "ports": [{"name": "imap", "containerPort": 143}],
                                "readinessProbe": {"tcpSocket": {"port": 143}, "periodSeconds": 1},
                                "volumeMounts": [
                                    {"name": "data", "mountPath": "/data"},
                                    {"name": "config", "mountPath": "/etc/e2e-dovecot"},
                                ],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": name}}],
                    },
                },
                # No storageClassName: the cluster's default (the harness' mailshard-local, kind's local-path).
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}},
                    }
                ],
            },
        },
    ]


def create_all(api: client.ApiClient, namespace: str, manifests: list[dict[str, Any]]) -> None:
    core = client.CoreV1Api(api)
    apps = client.AppsV1Api(api)
    creators: dict[str, Callable[[str, dict[str, Any]], Any]] = {
        "Pod": core.create_namespaced_pod,
        "Service": core.create_namespaced_service,
        "ConfigMap": core.create_namespaced_config_map,
        "StatefulSet": apps.create_namespaced_stateful_set,
    }
    for manifest in manifests:
        creators[manifest["kind"]](namespace, manifest)
