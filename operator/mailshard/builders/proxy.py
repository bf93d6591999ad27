"""The proxy tier of a MailCluster: the Deployment, Service and least-privilege identity of its proxies.

Each proxy pod runs two containers from one image (Dovecot with its Lua
passdb, plus the mailshard package): `proxy` renders the Dovecot proxy's
configuration and becomes `dovecot -F`; `routing` is the sidecar that watches
`<cluster>-routing` through the API and rewrites the route file the passdb
reads at every login, so a failover reaches the next login without a restart
(see `mailshard.proxy`). The routing table is read through the API, never from
a mounted ConfigMap, because the kubelet refreshes those only after up to a
minute.

The pod's ServiceAccount may read exactly one object: the cluster's routing
ConfigMap (a Role with `resourceNames`; the sidecar's list and watch select it
by `metadata.name`, which is what lets RBAC authorise them by name). Both
containers run as the unprivileged mail user, bind the well-known ports
through the namespaced `ip_unprivileged_port_start` sysctl, and drop every
capability. Readiness: the proxy's first port accepts connections, and the
sidecar has written a route file, since a proxy without one refuses every
login. The sidecar serves its metrics (the table version in force, route
propagation) on the pod's `metrics` port for a PodMonitor to scrape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from mailshard.api import proxy_pod
from mailshard.api.constants import LABEL_COMPONENT, LABEL_INSTANCE, LABEL_NAME, MAIL_USER_ID
from mailshard.api.v1alpha1 import MailCluster
from mailshard.api.v1alpha1.cluster import Protocol
from mailshard.builders.metadata import COMPONENT_PROXY, cluster_labels, cluster_object_metadata
from mailshard.builders.names import proxy_name, routing_config_map_name

PROXY_CONTAINER: Final = "proxy"
ROUTING_CONTAINER: Final = "routing"
IMAGE_PYTHON: Final = "/opt/mailshard/bin/python"
"""The mailshard virtualenv of the Dovecot image (images/dovecot/Dockerfile)."""
STATE_VOLUME: Final = "state"
TLS_VOLUME: Final = "tls"
TERMINATION_GRACE_SECONDS: Final = 30
"""Dovecot's proxy closes its client connections at once (`shutdown_clients`); clients reconnect elsewhere."""

_PORTS: Final[dict[Protocol, tuple[tuple[str, int, bool], ...]]] = {
    # protocol → (port name, port, implicit TLS)
    Protocol.IMAP: (("imap", 143, False), ("imaps", 993, True)),
    Protocol.POP3: (("pop3", 110, False), ("pop3s", 995, True)),
    Protocol.LMTP: (("lmtp", 24, False),),
    Protocol.MANAGESIEVE: (("managesieve", 4190, False),),
}


@dataclass(frozen=True)
class ProxyManifests:
    service_account: dict[str, Any]
    role: dict[str, Any]
    role_binding: dict[str, Any]
    deployment: dict[str, Any]
    service: dict[str, Any]
    pod_disruption_budget: dict[str, Any]

    def in_apply_order(self) -> tuple[dict[str, Any], ...]:
        """The identity before the pods that use it; the Service and budget last."""
        return (
            self.service_account,
            self.role,
            self.role_binding,
            self.deployment,
            self.service,
            self.pod_disruption_budget,
        )


def proxy_ports(cluster: MailCluster) -> list[tuple[str, int]]:
    """(name, port) the proxies serve: the spec's protocols, plus IMAPS and POP3S when TLS is configured."""
    tls = cluster.spec.tls is not None and cluster.spec.tls.secret_name is not None
    return [
        (name, port)
        for protocol in Protocol
        if protocol in cluster.spec.proxy.protocols
        for name, port, implicit_tls in _PORTS[protocol]
        if tls or not implicit_tls
    ]


def selector_labels(cluster: MailCluster) -> dict[str, str]:
    labels = cluster_labels(cluster, COMPONENT_PROXY)
    return {key: labels[key] for key in (LABEL_NAME, LABEL_INSTANCE, LABEL_COMPONENT)}


def build_proxy_manifests(cluster: MailCluster, *, default_image: str) -> ProxyManifests:
    name = proxy_name(cluster.metadata.name)
    return ProxyManifests(
        service_account={
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": cluster_object_metadata(cluster, name, COMPONENT_PROXY),
        },
        role={
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": cluster_object_metadata(cluster, name, COMPONENT_PROXY),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [routing_config_map_name(cluster.metadata.name)],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        role_binding={
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": cluster_object_metadata(cluster, name, COMPONENT_PROXY),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": cluster.metadata.namespace}],
        },
        deployment=_deployment(cluster, name, cluster.spec.proxy.image or default_image),
        service=_service(cluster, name),
        pod_disruption_budget={
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": cluster_object_metadata(cluster, name, COMPONENT_PROXY),
            # Proxies are stateless: one at a time may go, so drains proceed and never empty the tier.
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(cluster)}},
        },
    )


def _deployment(cluster: MailCluster, name: str, image: str) -> dict[str, Any]:
    labels = cluster_labels(cluster, COMPONENT_PROXY)
    tls_secret = cluster.spec.tls.secret_name if cluster.spec.tls is not None else None
    ports = proxy_ports(cluster)
    protocols = ",".join(p.value for p in Protocol if p in cluster.spec.proxy.protocols)
    serve_args = ["-m", "mailshard.proxy", "serve", "--dir", str(proxy_pod.STATE_DIR), "--protocols", protocols]
    state_mount: dict[str, Any] = {"name": STATE_VOLUME, "mountPath": str(proxy_pod.STATE_DIR)}
    proxy_mounts = [state_mount]
    volumes: list[dict[str, Any]] = [{"name": STATE_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}]
    if tls_secret is not None:
        serve_args += ["--tls-dir", str(proxy_pod.TLS_DIR)]
        proxy_mounts.append({"name": TLS_VOLUME, "mountPath": str(proxy_pod.TLS_DIR), "readOnly": True})
        volumes.append({"name": TLS_VOLUME, "secret": {"secretName": tls_secret, "defaultMode": 0o440}})
    restricted = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    proxy_container: dict[str, Any] = {
        "name": PROXY_CONTAINER,
        "image": image,
        "command": [IMAGE_PYTHON],
        "args": serve_args,
        "ports": [{"name": port_name, "containerPort": port, "protocol": "TCP"} for port_name, port in ports],
        "readinessProbe": {"tcpSocket": {"port": ports[0][0]}, "periodSeconds": 5, "failureThreshold": 3},
        "securityContext": restricted,
        "volumeMounts": proxy_mounts,
    }
    resources = cluster.spec.proxy.resources.to_manifest() if cluster.spec.proxy.resources is not None else {}
    if resources:
        proxy_container["resources"] = resources
    routing_container: dict[str, Any] = {
        "name": ROUTING_CONTAINER,
        "image": image,
        "command": [IMAGE_PYTHON],
        "args": [
            "-m",
            "mailshard.proxy",
            "follow",
            "--cluster",
            cluster.metadata.name,
            "--namespace",
            cluster.metadata.namespace,
            "--dir",
            str(proxy_pod.STATE_DIR),
            "--metrics-address",
            f":{proxy_pod.METRICS_PORT}",
        ],
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
        "ports": [{"name": "metrics", "containerPort": proxy_pod.METRICS_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "exec": {"command": ["test", "-s", str(proxy_pod.routes_file(proxy_pod.STATE_DIR))]},
            "periodSeconds": 5,
        },
        "securityContext": restricted,
        "volumeMounts": [state_mount],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": cluster_object_metadata(cluster, name, COMPONENT_PROXY),
        "spec": {
            "replicas": cluster.spec.proxy.replicas,
            "selector": {"matchLabels": selector_labels(cluster)},
            # Never fewer ready proxies than asked for during a rollout: a new pod first, then an old one goes.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": name,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": MAIL_USER_ID,
                        "runAsGroup": MAIL_USER_ID,
                        "fsGroup": MAIL_USER_ID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                        "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}],
                    },
                    "affinity": {
                        "podAntiAffinity": {
                            # Spread proxies over nodes so one node's loss leaves the others serving.
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "weight": 100,
                                    "podAffinityTerm": {
                                        "topologyKey": "kubernetes.io/hostname",
                                        "labelSelector": {"matchLabels": selector_labels(cluster)},
                                    },
                                }
                            ]
                        }
                    },
                    "containers": [proxy_container, routing_container],
                    "volumes": volumes,
                },
            },
        },
    }


def _service(cluster: MailCluster, name: str) -> dict[str, Any]:
    metadata = cluster_object_metadata(cluster, name, COMPONENT_PROXY)
    service_spec = cluster.spec.proxy.service
    if service_spec.annotations:
        metadata["annotations"] = dict(sorted(service_spec.annotations.items()))
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": service_spec.type.value,
            "selector": selector_labels(cluster),
            "ports": [
                {"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}
                for port_name, port in proxy_ports(cluster)
            ],
        },
    }
