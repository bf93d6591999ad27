"""The operator's proxy tier as real pods: the Deployment `mailshard.builders.proxy` builds, on a real node.

What only a real node shows: the Dovecot image runs the proxy as the
unprivileged mail user, binding 143 through the pod's sysctl; the routing
sidecar authenticates with the pod's own ServiceAccount token and is allowed,
by the Role with `resourceNames`, to list and watch exactly the routing
ConfigMap; the proxy resolves a member's DNS name from the table and relays a
real IMAP session to it through the `<cluster>-proxy` Service; and a change of
the table reaches the next login without restarting anything. The operator is
not running here (the control-plane tiers prove it builds and keeps these
objects); the test creates the same manifests itself, without owner references,
since there is no MailCluster object to own them.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import pytest
from kubernetes import client, utils

from e2e_support import IMAGE, create_all, eventually, mail_statefulset, pod_ready, run_in_pod
from mailshard.api import MailCluster
from mailshard.api.routing import TABLE_KEY, RoutingTable, ShardRoute, ShardState, render_table
from mailshard.builders.proxy import build_proxy_manifests

pytestmark = pytest.mark.e2e

IMAP = """
import imaplib, sys
action, host, token = sys.argv[1:4]
imap = imaplib.IMAP4(host, 143, timeout=10)
try:
    imap.login("alice", "e2e-secret")
except imaplib.IMAP4.error as exc:
    print("refused", exc)
    sys.exit(0)
if action == "append":
    imap.append("INBOX", None, None, f"Subject: {token}\\r\\n\\r\\nthrough the proxy\\r\\n".encode())
    print("appended")
else:
    imap.select("INBOX")
    print(len(imap.search(None, "SUBJECT", token)[1][0].split()))
imap.logout()
"""


def routing_config_map(version: int, state: ShardState, host: str) -> dict[str, Any]:
    table = RoutingTable(
        version=version,
        slots=("mail",) * 8,
        shards={"mail": ShardRoute(state=state, master="mail-0", master_host=host)},
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "demo-routing"},
        "data": {TABLE_KEY: render_table(table)},
    }


def proxy_tier(namespace: str) -> list[dict[str, Any]]:
    cluster = MailCluster.from_resource(
        {
            "apiVersion": "mailshard.io/v1alpha1",
            "kind": "MailCluster",
            "metadata": {"name": "demo", "namespace": namespace, "uid": "none", "generation": 1},
            "spec": {"proxy": {"replicas": 1, "protocols": ["imap"]}},
        }
    )
    manifests = list(build_proxy_manifests(cluster, default_image=IMAGE).in_apply_order())
    for manifest in manifests:
        manifest["metadata"].pop("ownerReferences")  # no MailCluster here; the collector would delete orphans
    return manifests


def test_the_proxy_tier_relays_imap_to_the_tables_master_and_follows_the_table(
    api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    create_all(api_client, namespace, mail_statefulset("mail", replicas=1))
    eventually(functools.partial(pod_ready, core, namespace, "mail-0"), timeout=90, what="mail-0 Ready")
    member = f"mail-0.mail.{namespace}.svc.cluster.local"
    core.create_namespaced_config_map(namespace, routing_config_map(1, ShardState.SERVING, member))
    for manifest in proxy_tier(namespace):
        utils.create_from_dict(api_client, manifest, namespace=namespace)

    def proxy_pod() -> client.V1Pod | None:
        pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/component=proxy").items
        ready = [p for p in pods if pod_ready(core, namespace, p.metadata.name) is not None]
        return ready[0] if ready else None

    # Ready means both containers are: the proxy listens on 143, and the sidecar wrote the route file,
    # which needs its ServiceAccount token to be allowed to list and watch demo-routing.
    proxy = eventually(proxy_pod, timeout=120, what="the proxy pod Ready (proxy listening, routes written)")
    security = proxy.spec.security_context
    assert (security.run_as_user, security.run_as_non_root) == (10001, True)
    code, out = run_in_pod(core, namespace, proxy.metadata.name, ["id", "-u"], container="proxy")
    assert (code, out.strip()) == (0, "10001"), out

    token = f"e2e-proxy-{int(time.time())}"
    service_host = f"demo-proxy.{namespace}.svc.cluster.local"

    def through_proxy(action: str) -> str | None:
        code, out = run_in_pod(core, namespace, "mail-0", ["python3", "-c", IMAP, action, service_host, token])
        return out.strip() if code == 0 else None

    # Retried: kube-proxy programs the new Service a moment after its endpoint is ready.
    assert eventually(lambda: through_proxy("append"), timeout=60, what="an APPEND through the proxy") == "appended"
    code, out = run_in_pod(core, namespace, "mail-0", ["python3", "-c", IMAP, "count", "127.0.0.1", token])
    assert (code, out.strip()) == (0, "1"), out

    # Fencing the shard in the table: the next login through the proxy is refused temporarily, no restart.
    core.replace_namespaced_config_map("demo-routing", namespace, routing_config_map(2, ShardState.FENCED, member))
    started = time.monotonic()

    def refused_login() -> str | None:
        out = through_proxy("count")
        return out if out is not None and out.startswith("refused") else None

    refused = eventually(refused_login, timeout=30, what="a login refused once the shard is fenced")
    assert "UNAVAILABLE" in refused, refused
    print(f"fence in the table → refused login through the proxy pod: {time.monotonic() - started:.2f} s")
    core.replace_namespaced_config_map("demo-routing", namespace, routing_config_map(3, ShardState.SERVING, member))
    assert eventually(lambda: through_proxy("count"), timeout=30, what="logins served again") == "1"
    restarts = [
        s.restart_count for s in core.read_namespaced_pod(proxy.metadata.name, namespace).status.container_statuses
    ]
    assert restarts == [0, 0]
