"""The proxy tier the operator builds from a MailCluster, and the command line its containers run.

The Deployment's container arguments are parsed with the real
`python -m mailshard.proxy` parser, so a builder and CLI that drift apart fail
here; the rendered Dovecot configuration for those arguments is checked too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from unit_support import cluster_body

from mailshard.api import MailCluster, proxy_pod
from mailshard.builders.proxy import PROXY_CONTAINER, ROUTING_CONTAINER, build_proxy_manifests, proxy_ports
from mailshard.proxy.__main__ import parser, settings_from
from mailshard.proxy.render import CONF_FILE, render_proxy
from mailshard.services.cluster import _Proxies, _readiness

pytestmark = pytest.mark.unit

IMAGE = "mailshard/dovecot:9.9.9"


def cluster(**spec: Any) -> MailCluster:
    return MailCluster.from_resource(cluster_body(**spec))


def containers(manifests: Any) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in manifests.deployment["spec"]["template"]["spec"]["containers"]}


def test_the_default_tier_serves_every_protocol_in_plain_text() -> None:
    built = build_proxy_manifests(cluster(), default_image=IMAGE)
    assert [m["kind"] for m in built.in_apply_order()] == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ]
    assert {m["metadata"]["name"] for m in built.in_apply_order()} == {"demo-proxy"}
    for manifest in built.in_apply_order():
        (owner,) = manifest["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("MailCluster", "demo", True)
    ports = {p["name"]: p["port"] for p in built.service["spec"]["ports"]}
    assert ports == {"imap": 143, "pop3": 110, "lmtp": 24, "managesieve": 4190}
    assert built.service["spec"]["type"] == "ClusterIP"
    assert built.deployment["spec"]["replicas"] == 2
    assert {c["image"] for c in containers(built).values()} == {IMAGE}


def test_tls_adds_the_implicit_tls_ports_and_mounts_the_secret() -> None:
    built = build_proxy_manifests(
        cluster(tls={"secretName": "mail-tls"}, proxy={"protocols": ["imap", "pop3"]}), default_image=IMAGE
    )
    assert [name for name, _ in proxy_ports(cluster(tls={"secretName": "x"}))] == [
        "imap",
        "imaps",
        "pop3",
        "pop3s",
        "lmtp",
        "managesieve",
    ]
    ports = {p["name"]: p["port"] for p in built.service["spec"]["ports"]}
    assert ports == {"imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995}
    pod = built.deployment["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "mail-tls", "defaultMode": 0o440}} in pod["volumes"]
    proxy = containers(built)[PROXY_CONTAINER]
    assert {"name": "tls", "mountPath": str(proxy_pod.TLS_DIR), "readOnly": True} in proxy["volumeMounts"]
    assert "tls" not in [m["name"] for m in containers(built)[ROUTING_CONTAINER]["volumeMounts"]]


def test_the_container_arguments_are_what_the_command_line_accepts() -> None:
    built = build_proxy_manifests(
        cluster(tls={"secretName": "mail-tls"}, proxy={"protocols": ["lmtp", "imap"]}), default_image=IMAGE
    )
    proxy, routing = containers(built)[PROXY_CONTAINER], containers(built)[ROUTING_CONTAINER]
    assert proxy["command"] == routing["command"] == ["/opt/mailshard/bin/python"]
    assert proxy["args"][:2] == routing["args"][:2] == ["-m", "mailshard.proxy"]
    serve = parser().parse_args(proxy["args"][2:])
    assert serve.protocols == ("imap", "lmtp")  # in the canonical order, whatever the spec's order
    settings = settings_from(serve)
    assert settings.routes_file == proxy_pod.routes_file(proxy_pod.STATE_DIR)
    assert settings.tls_cert == proxy_pod.TLS_DIR / "tls.crt"
    conf = render_proxy(settings)[CONF_FILE]
    assert "protocols = imap lmtp\n" in conf
    assert "port = 993\n    ssl = yes\n" in conf
    follow = parser().parse_args(routing["args"][2:])
    assert (follow.cluster, follow.namespace, follow.dir) == ("demo", "mail", proxy_pod.STATE_DIR)
    # The sidecar serves its metrics on the port the pod declares, by name, for a PodMonitor.
    assert follow.metrics_address == f":{proxy_pod.METRICS_PORT}"
    assert routing["ports"] == [{"name": "metrics", "containerPort": proxy_pod.METRICS_PORT, "protocol": "TCP"}]
    assert "metrics" not in {port["name"] for port in proxy["ports"]}
    # The sidecar is ready once it has written the file the proxy's passdb reads.
    assert routing["readinessProbe"]["exec"]["command"] == ["test", "-s", str(settings.routes_file)]
    assert proxy["readinessProbe"]["tcpSocket"]["port"] == "imap"


def test_the_pods_may_read_their_routing_table_and_nothing_else() -> None:
    built = build_proxy_manifests(cluster(), default_image=IMAGE)
    assert built.role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["demo-routing"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    assert built.role_binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "demo-proxy",
    }
    assert built.role_binding["subjects"] == [{"kind": "ServiceAccount", "name": "demo-proxy", "namespace": "mail"}]
    pod = built.deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "demo-proxy"
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in pod["containers"]:
        assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_spec_overrides_reach_the_manifests() -> None:
    built = build_proxy_manifests(
        cluster(
            proxy={
                "replicas": 3,
                "image": "registry.example/proxy:1",
                "resources": {"requests": {"cpu": "100m"}},
                "service": {"type": "LoadBalancer", "annotations": {"metallb.universe.tf/address-pool": "mail"}},
            }
        ),
        default_image=IMAGE,
    )
    assert built.deployment["spec"]["replicas"] == 3
    assert containers(built)[PROXY_CONTAINER]["image"] == "registry.example/proxy:1"
    assert containers(built)[PROXY_CONTAINER]["resources"] == {"requests": {"cpu": "100m"}}
    assert built.service["spec"]["type"] == "LoadBalancer"
    assert built.service["metadata"]["annotations"] == {"metallb.universe.tf/address-pool": "mail"}
    # The selector picks the proxies only, never the cluster's other objects.
    assert built.service["spec"]["selector"] == built.deployment["spec"]["selector"]["matchLabels"]
    assert built.service["spec"]["selector"]["app.kubernetes.io/component"] == "proxy"


def test_an_unknown_service_type_is_refused_at_the_boundary() -> None:
    with pytest.raises(ValueError, match="ClusterIP"):
        cluster(proxy={"service": {"type": "ExternalName"}})


@pytest.mark.parametrize(
    ("ready", "total", "proxies", "expected"),
    [
        (2, 2, _Proxies(2, 2), (True, "ShardsReady", "2 of 2 shards ready, 2 of 2 proxies ready")),
        (2, 2, _Proxies(2, 1), (True, "ShardsReady", "2 of 2 shards ready, 1 of 2 proxies ready")),
        (2, 2, _Proxies(2, 0), (False, "ProxiesNotReady", "2 of 2 shards ready, 0 of 2 proxies ready")),
        (1, 2, _Proxies(2, 0), (False, "ShardsNotReady", "1 of 2 shards ready, 0 of 2 proxies ready")),
        (2, 2, _Proxies(0, 0), (True, "ShardsReady", "2 of 2 shards ready")),
    ],
)
def test_a_cluster_is_ready_with_every_shard_and_a_serving_proxy(
    ready: int, total: int, proxies: _Proxies, expected: tuple[bool, str, str]
) -> None:
    assert _readiness(ready, total, proxies) == expected


def test_the_command_line_refuses_unknown_protocols_and_ports(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["serve", "--protocols", "imap,smtp"], ["serve", "--port", "smtp=25"], ["serve", "--port", "imap=x"]):
        with pytest.raises(SystemExit):
            parser().parse_args(args)
    assert "expected" in capsys.readouterr().err


def test_serve_defaults_to_the_pod_layout(tmp_path: Path) -> None:
    args = parser().parse_args(["serve", "--dir", str(tmp_path), "--port", "imap=1143"])
    settings = settings_from(args)
    assert (settings.ports.imap, settings.ports.pop3) == (1143, 110)
    assert (settings.base_dir, settings.tls_cert) == (tmp_path / "run", None)
