"""A real node runs our images as pods: addresses, cluster DNS, Services, and local volumes that stay.

Each claim is what the operator's data plane will rely on: members run our
Dovecot image; the proxy finds `<shard>-master` by its Service name and reaches
the member behind it; a recreated member pod gets its own volume back, with its
mail in it.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from e2e_support import (
    Cluster,
    create_all,
    eventually,
    mail_statefulset,
    pod,
    pod_ready,
    run_in_pod,
    service,
)

pytestmark = pytest.mark.e2e

WEB_SERVER = ["sh", "-c", "mkdir -p /srv && hostname > /srv/index.html && cd /srv && exec python3 -m http.server 8080"]
SLEEPER = ["sleep", "infinity"]


@pytest.fixture(scope="module")
def web_and_client(api_client: client.ApiClient) -> Iterator[str]:
    """Namespace with a web server pod behind ClusterIP Service `web`, and a client pod; both Ready."""
    core = client.CoreV1Api(api_client)
    namespace = f"e2e-net-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace, "labels": {"mailshard.io/test": "e2e"}}})
    web = pod("web", WEB_SERVER)
    web["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
    create_all(api_client, namespace, [web, service("web", {"app": "web"}, 80, 8080), pod("client", SLEEPER)])
    for name in ("web", "client"):
        eventually(functools.partial(pod_ready, core, namespace, name), timeout=90, what=f"pod {name} Ready")
    yield namespace
    core.delete_namespace(namespace, propagation_policy="Background")


def test_pods_get_addresses_on_the_node_network_and_run_our_image(
    api_client: client.ApiClient, web_and_client: str, cluster: Cluster
) -> None:
    core = client.CoreV1Api(api_client)
    web = core.read_namespaced_pod("web", web_and_client)
    client_pod = core.read_namespaced_pod("client", web_and_client)
    assert web.status.pod_ip
    assert client_pod.status.pod_ip not in (None, web.status.pod_ip)
    assert web.status.container_statuses[0].image.endswith("mailshard/dovecot:0.1.0")
    code, out = run_in_pod(core, web_and_client, "client", ["dovecot", "--version"])
    assert code == 0, out
    assert out.startswith("2.3."), out
    if cluster.node_subnet is not None:
        subnet = ipaddress.ip_network(cluster.node_subnet)
        assert ipaddress.ip_address(web.status.pod_ip) in subnet
        assert ipaddress.ip_address(client_pod.status.pod_ip) in subnet
        # A route to the Services and the bridge's own subnet; no default route out of the machine.
        code, routes = run_in_pod(core, web_and_client, "client", ["cat", "/proc/net/route"])
        destinations = [line.split()[1] for line in routes.splitlines()[1:] if line.strip()]
        assert code == 0, routes
        assert destinations, routes
        assert "00000000" not in destinations, routes


def test_service_names_resolve_inside_pods(api_client: client.ApiClient, web_and_client: str) -> None:
    core = client.CoreV1Api(api_client)
    cluster_ip = core.read_namespaced_service("web", web_and_client).spec.cluster_ip
    for name in (f"web.{web_and_client}.svc.cluster.local", "web", "kubernetes.default"):

        def resolved(name: str = name) -> str | None:
            code, out = run_in_pod(core, web_and_client, "client", ["getent", "hosts", name])
            return out.split()[0] if code == 0 else None

        # Retried: CoreDNS learns a new Service from its watch, a moment after it is created.
        address = eventually(resolved, timeout=30, what=f"{name} to resolve")
        if name != "kubernetes.default":
            assert address == cluster_ip


def test_a_pod_reaches_another_through_its_cluster_ip_service(
    api_client: client.ApiClient, web_and_client: str
) -> None:
    core = client.CoreV1Api(api_client)
    fetch = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().strip())"
    cluster_ip = core.read_namespaced_service("web", web_and_client).spec.cluster_ip
    for url in ("http://web/", f"http://{cluster_ip}/"):

        def served(url: str = url) -> str | None:
            code, out = run_in_pod(core, web_and_client, "client", ["python3", "-c", fetch, url])
            return out.strip() if code == 0 else None

        # Retried: kube-proxy programs a new Service's endpoints a moment after they become ready.
        assert eventually(served, timeout=30, what=f"{url} to answer") == "web"


IMAP = """
import imaplib, sys
action, host, token = sys.argv[1:4]
imap = imaplib.IMAP4(host, 143)
imap.login("alice", "e2e-secret")
if action == "append":
    imap.append("INBOX", None, None, f"Subject: {token}\\r\\n\\r\\nkept across pod deletion\\r\\n".encode())
else:
    imap.select("INBOX")
    print(len(imap.search(None, "SUBJECT", token)[1][0].split()))
imap.logout()
"""


def test_statefulset_pods_get_local_volumes_and_keep_them_across_deletion(
    api_client: client.ApiClient, namespace: str, cluster: Cluster
) -> None:
    core = client.CoreV1Api(api_client)
    create_all(api_client, namespace, mail_statefulset("mail"))
    members = ("mail-0", "mail-1")
    pods = {
        n: eventually(functools.partial(pod_ready, core, namespace, n), timeout=90, what=f"{n} Ready") for n in members
    }

    volumes = {}
    for name, member in pods.items():
        claim = core.read_namespaced_persistent_volume_claim(f"data-{name}", namespace)
        assert claim.status.phase == "Bound"
        volume = core.read_persistent_volume(claim.spec.volume_name)
        terms = volume.spec.node_affinity.required.node_selector_terms
        assert [member.spec.node_name] in [e.values for t in terms for e in t.match_expressions or []]
        if cluster.node_subnet is not None:
            # The harness' provisioner made a local PV and its directory, which the kubelet mounted.
            assert volume.spec.local is not None
            assert Path(volume.spec.local.path).is_dir()
        volumes[name] = claim.spec.volume_name
    assert volumes["mail-0"] != volumes["mail-1"]

    # Real mail into mail-0, through its stable name on the headless Service.
    token = f"e2e-{uuid.uuid4().hex[:8]}"
    host = f"mail-0.mail.{namespace}.svc.cluster.local"

    def append() -> bool:
        code, _ = run_in_pod(core, namespace, "mail-1", ["python3", "-c", IMAP, "append", host, token])
        return code == 0

    # Retried: the name resolves once the pod's endpoint is published.
    eventually(append, timeout=60, what="an IMAP APPEND to mail-0")

    first_uid = pods["mail-0"].metadata.uid
    core.delete_namespaced_pod("mail-0", namespace, grace_period_seconds=1)

    def recreated_and_ready() -> client.V1Pod | None:
        member = pod_ready(core, namespace, "mail-0")
        return member if member is not None and member.metadata.uid != first_uid else None

    recreated = eventually(recreated_and_ready, timeout=90, what="mail-0 recreated and Ready")
    assert core.read_namespaced_persistent_volume_claim("data-mail-0", namespace).spec.volume_name == volumes["mail-0"]
    assert recreated.spec.node_name == pods["mail-0"].spec.node_name
    code, out = run_in_pod(core, namespace, "mail-0", ["cat", "/data/first-pod-uid"])
    assert code == 0, out
    assert out.strip() == first_uid, out
    # The new pod's address, not its name: cluster DNS may still cache the old one for its TTL.
    address = recreated.status.pod_ip
    code, out = run_in_pod(core, namespace, "mail-1", ["python3", "-c", IMAP, "count", address, token])
    assert code == 0, out
    assert out.strip() == "1", out


@pytest.mark.skipif(os.geteuid() != 0, reason="the node harness checks for root before its prerequisites")
def test_a_start_without_the_runtime_says_what_is_missing(tmp_path: Path, cluster: Cluster) -> None:
    if cluster.node_subnet is None:
        pytest.skip("a property of this machine's node harness, not of the cluster under test")
    # A PATH with every tool the node needs but containerd and ctr.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("runc", "iptables", "iptables-save", "iptables-restore", "ip6tables", "ip", "podman", "gcc", "umount"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    result = subprocess.run(
        [sys.executable, "-m", "mailshard_harness", "node-up"],
        env={**os.environ, "PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert "missing: containerd (containerd, ctr)" in result.stderr, result.stderr
    assert "make node-deps" in result.stderr
