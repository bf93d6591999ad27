"""The operator, running for real, builds each MailCluster's proxy tier and keeps it as built.

The proxy pods are KWOK's (no containers run), so what is proven here is the
control plane's side: the Deployment, Service, budget and the pods' own
identity exist and are reverted when edited; the cluster's status counts ready
proxies; a spec the API refuses becomes a condition, not a crash loop; and the
identity is least privilege, checked by the real RBAC authoriser, with the real
routing sidecar following the table as that identity. The containers' command
lines are run as real processes by the mail tier (`mailshard_harness.local_proxy`).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from operator_support import REPO, eventually, free_port, kubectl

from mailshard.api import proxy_pod
from mailshard.api.routing import TABLE_KEY, RoutingTable, ShardRoute, ShardState, parse_table, render_table
from mailshard.proxy.sidecar import watch
from mailshard_harness.identity import service_account_kubeconfig
from mailshard_harness.testing import Samples, sample, scrape

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("operator")]

GROUP, VERSION = "mailshard.io", "v1alpha1"
PROXY = "demo-proxy"


def apply_examples(kubeconfig: Path, namespace: str) -> None:
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(REPO / "examples"))


def cluster_status(api_client: client.ApiClient, namespace: str) -> dict[str, Any]:
    body = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "mailclusters", "demo"
    )
    return dict(body.get("status") or {})


def condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), None)


def reasons(api_client: client.ApiClient, namespace: str) -> list[str]:
    events = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    return [f"{e.reason}: {e.message}" for e in events if e.involved_object.kind == "MailCluster"]


def test_a_cluster_gets_its_proxy_tier_and_counts_ready_proxies(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    apply_examples(kubeconfig, namespace)
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    deployment = eventually(lambda: _get(apps.read_namespaced_deployment, namespace), what="the proxy Deployment")
    assert deployment.spec.replicas == 2
    assert deployment.metadata.owner_references[0].kind == "MailCluster"
    assert [c.name for c in deployment.spec.template.spec.containers] == ["proxy", "routing"]
    # One run creates the children in turn; the Service may come a moment after the Deployment.
    service = eventually(lambda: _get(core.read_namespaced_service, namespace), what="the proxy Service")
    assert {p.name: p.port for p in service.spec.ports} == {"imap": 143, "pop3": 110, "lmtp": 24, "managesieve": 4190}
    assert core.read_namespaced_service_account(PROXY, namespace).metadata.owner_references[0].name == "demo"
    budget = eventually(
        lambda: _get(client.PolicyV1Api(api_client).read_namespaced_pod_disruption_budget, namespace),
        what="the proxy budget",
    )
    assert budget.spec.max_unavailable == 1

    def ready() -> dict[str, Any] | None:
        status = cluster_status(api_client, namespace)
        ready_condition = condition(status, "Ready")
        if status.get("proxiesReady") != 2 or ready_condition is None or ready_condition["status"] != "True":
            return None
        return status

    status = eventually(ready, timeout=120, what="both proxies ready and the cluster Ready")
    assert condition(status, "Ready")["message"] == "2 of 2 shards ready, 2 of 2 proxies ready"
    assert any(r.startswith("Created: created ServiceAccount/demo-proxy") for r in reasons(api_client, namespace))
    columns = kubectl(kubeconfig, "get", "mailclusters", "-n", namespace).stdout.splitlines()
    assert columns[0].split()[:5] == ["NAME", "SHARDS", "READY", "PROXIES", "ROUTING-VERSION"]
    assert columns[1].split()[3] == "2"

    # Scaling the tier in the spec reaches the Deployment; none ready counts as not serving.
    patch = {"spec": {"proxy": {"replicas": 0}}}
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "mailclusters", "demo", patch
    )
    eventually(
        lambda: apps.read_namespaced_deployment(PROXY, namespace).spec.replicas == 0 or None,
        what="the Deployment scaled to 0",
    )
    eventually(lambda: cluster_status(api_client, namespace).get("proxiesReady") == 0 or None, what="0 proxies ready")


def test_edits_to_the_proxy_tier_are_reverted(api_client: client.ApiClient, kubeconfig: Path, namespace: str) -> None:
    apply_examples(kubeconfig, namespace)
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
    eventually(lambda: _get(apps.read_namespaced_deployment, namespace), what="the proxy Deployment")
    # Both children exist before either is edited (the Service may be written a moment after the Deployment).
    eventually(lambda: _get(core.read_namespaced_service, namespace), what="the proxy Service")
    apps.patch_namespaced_deployment(PROXY, namespace, {"spec": {"replicas": 5}})
    core.delete_namespaced_service(PROXY, namespace)
    eventually(
        lambda: apps.read_namespaced_deployment(PROXY, namespace).spec.replicas == 2 or None,
        what="the edited replica count reverted",
    )
    eventually(lambda: _get(core.read_namespaced_service, namespace), what="the deleted Service recreated")
    found = eventually(
        lambda: [r for r in reasons(api_client, namespace) if r.startswith("DriftReverted")] or None,
        what="a DriftReverted Event",
    )
    assert "Deployment/demo-proxy (.spec.replicas)" in " ".join(found)


def test_a_service_the_api_refuses_stalls_the_cluster_with_the_apis_reason(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    apply_examples(kubeconfig, namespace)
    patch = {"spec": {"proxy": {"service": {"annotations": {"not a valid key!": "x"}}}}}
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "mailclusters", "demo", patch
    )

    def stalled() -> dict[str, Any] | None:
        found = condition(cluster_status(api_client, namespace), "Stalled")
        return found if found is not None and found["status"] == "True" else None

    found = eventually(stalled, what="Stalled for the refused Service")
    assert found["reason"] == "InvalidSpec"
    assert "the API refused the proxy tier" in found["message"]
    assert "not a valid key!" in found["message"]
    # The routing table is published regardless: proxies that already run keep following failovers.
    assert client.CoreV1Api(api_client).read_namespaced_config_map("demo-routing", namespace).data[TABLE_KEY]
    patch = {"spec": {"proxy": {"service": {"annotations": None}}}}
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "mailclusters", "demo", patch
    )
    eventually(
        lambda: (condition(cluster_status(api_client, namespace), "Stalled") or {}).get("status") == "False" or None,
        what="Stalled cleared once the spec is fixed",
    )


def proxy_identity(api_client: client.ApiClient, kubeconfig: Path, namespace: str, tmp_path: Path) -> Path:
    """The examples applied, their proxy tier's identity and routing table in place: a kubeconfig as that identity."""
    apply_examples(kubeconfig, namespace)
    rbac = client.RbacAuthorizationV1Api(api_client)
    eventually(lambda: _get(rbac.read_namespaced_role_binding, namespace), what="the RoleBinding")
    core = client.CoreV1Api(api_client)
    eventually(lambda: _get(core.read_namespaced_config_map, namespace, "demo-routing"), what="the table")
    # The tier's other children are written in the same reconcile, but not necessarily before the table.
    apps = client.AppsV1Api(api_client)
    eventually(lambda: _get(apps.read_namespaced_deployment, namespace), what="the proxy Deployment")
    return service_account_kubeconfig(api_client, kubeconfig, namespace, PROXY, tmp_path / "proxy.kubeconfig")


def test_the_proxies_identity_reads_its_routing_table_and_nothing_else(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    identity = proxy_identity(api_client, kubeconfig, namespace, tmp_path)
    core = client.CoreV1Api(api_client)

    def allowed(verb: str, resource: str, name: str | None = None) -> bool:
        review = {
            "spec": {
                "user": f"system:serviceaccount:{namespace}:{PROXY}",
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                "resourceAttributes": {"namespace": namespace, "verb": verb, "resource": resource, "name": name},
            }
        }
        result = client.AuthorizationV1Api(api_client).create_subject_access_review(review)
        return bool(result.status.allowed)

    for verb in ("get", "list", "watch"):
        assert allowed(verb, "configmaps", "demo-routing")
    assert not allowed("get", "configmaps", "dovecot-1")
    assert not allowed("list", "configmaps")
    assert not allowed("update", "configmaps", "demo-routing")
    assert not allowed("get", "secrets", "dovecot-1-replication")
    assert not allowed("list", "pods")

    # The real sidecar, authenticated as the proxies' ServiceAccount, follows the table into a route file.
    routes, stop = start_sidecar("demo", namespace, identity, tmp_path)
    try:
        version = parse_table(core.read_namespaced_config_map("demo-routing", namespace).data[TABLE_KEY]).version
        text = eventually(
            lambda: routes.read_text() if routes.exists() else None, what="the sidecar's route file", timeout=30
        )
        written = next(int(line.split()[1]) for line in text.splitlines() if line.startswith("version "))
        assert written >= version
    finally:
        stop.set()


def test_the_sidecar_process_serves_its_metrics_and_measures_route_propagation(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    """`python -m mailshard.proxy follow` exactly as the pod runs it, as the pod's identity, scraped on its port."""
    identity = proxy_identity(api_client, kubeconfig, namespace, tmp_path)
    core = client.CoreV1Api(api_client)
    deployment = client.AppsV1Api(api_client).read_namespaced_deployment(PROXY, namespace)
    routing = next(c for c in deployment.spec.template.spec.containers if c.name == "routing")
    assert [(p.name, p.container_port) for p in routing.ports] == [("metrics", proxy_pod.METRICS_PORT)]
    args = list(routing.args)
    port = free_port()
    args[args.index("--metrics-address") + 1] = f"127.0.0.1:{port}"  # the pod's :9090, on a free loopback port
    args[args.index("--dir") + 1] = str(tmp_path / "state")
    log = tmp_path / "sidecar.log"
    with log.open("wb") as out:
        sidecar = subprocess.Popen(
            [sys.executable, *args, "--kubeconfig", str(identity)], stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/metrics"
    labels = {"namespace": namespace, "cluster": "demo"}

    def table() -> RoutingTable:
        return parse_table(core.read_namespaced_config_map("demo-routing", namespace).data[TABLE_KEY])

    def in_force(newer_than: float) -> Samples | None:
        assert sidecar.poll() is None, log.read_text()
        try:
            samples = scrape(url)
        except OSError:
            return None
        found = sample(samples, "mailshard_proxy_routing_table_version", **labels)
        return samples if found is not None and found > newer_than else None

    try:
        samples = eventually(lambda: in_force(0), timeout=30, what="the sidecar serving a first table")
        first = sample(samples, "mailshard_proxy_routing_table_version", **labels) or 0
        assert first <= table().version
        applied = sample(samples, "mailshard_proxy_routing_table_applied_timestamp_seconds", **labels)
        assert applied is not None
        assert time.time() - 60 < applied <= time.time()
        assert sample(samples, "mailshard_proxy_routing_tables_refused_total", **labels) == 0

        # A change of route (a fenced shard) is a new version the operator stamps; the sidecar measures its delay.
        kubectl(kubeconfig, "annotate", "-n", namespace, "mailshard", "dovecot-1", "mailshard.io/fenced=true")
        fenced = eventually(
            lambda: (t := table()).shards["dovecot-1"].state is ShardState.FENCED and t,
            timeout=30,
            what="the shard fenced in a new table version",
        )
        assert fenced.written_at is not None
        assert abs(time.time() - fenced.written_at.timestamp()) < 60
        samples = eventually(lambda: in_force(fenced.version - 1), timeout=30, what="the sidecar taking it")
        observed = sample(samples, "mailshard_proxy_route_propagation_seconds_count", **labels) or 0
        delay = sample(samples, "mailshard_proxy_route_propagation_seconds_sum", **labels) or 0
        assert observed >= 1
        assert 0 <= delay / observed < 10, delay / observed
        print(f"route propagation operator write -> sidecar applied: {delay / observed:.3f} s on average")
    finally:
        sidecar.terminate()
        sidecar.wait(10)


def start_sidecar(cluster: str, namespace: str, kubeconfig: Path, tmp_path: Path) -> tuple[Path, threading.Event]:
    """The real routing sidecar in a thread, following `<cluster>-routing` into a route file; (file, stop)."""
    routes = proxy_pod.routes_file(tmp_path)
    routes.parent.mkdir(parents=True)
    stop = threading.Event()
    threading.Thread(
        target=watch,
        kwargs={
            "cluster": cluster,
            "namespace": namespace,
            "routes_file": routes,
            "doveadm": lambda args: "",  # no proxy process here: nobody to kick
            "kubeconfig": str(kubeconfig),
            "stop": stop.is_set,
        },
        daemon=True,
    ).start()
    return routes, stop


def _get(read: Any, namespace: str, name: str = PROXY) -> Any:
    try:
        return read(name, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def serving(host: str) -> ShardRoute:
    return ShardRoute(state=ShardState.SERVING, master="m", master_host=host)


class Relay:
    """A TCP relay to the API server that can be cut (every connection dropped, new ones reset) and restored.

    The listener stays bound while cut: a freed port could be taken by a client's
    own ephemeral port (the sidecar keeps retrying it) and then not be bindable again.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._open = True
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def restore(self) -> None:
        with self._lock:
            self._open = True

    def cut(self) -> None:
        with self._lock:
            self._open = False
            for sock in self._connections:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._connections.clear()

    def close(self) -> None:
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if not self._open:
                    # Reset at once, as a peer that is gone would.
                    near.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    near.close()
                    continue
            far = socket.create_connection(self.target)
            with self._lock:
                self._connections += [near, far]
            for one, other in ((near, far), (far, near)):
                threading.Thread(target=self._pipe, args=(one, other), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def test_the_sidecar_keeps_its_last_table_while_the_api_is_away_and_catches_up(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    core = client.CoreV1Api(api_client)
    # A table no MailCluster owns (the operator leaves it alone), so the test alone writes it.
    table = RoutingTable(
        version=1,
        slots=("s",) * 4,
        shards={"s": ShardRoute(state=ShardState.SERVING, master="m", master_host="host-1")},
    )
    config_map = {"metadata": {"name": "lone-routing"}, "data": {TABLE_KEY: render_table(table)}}
    core.create_namespaced_config_map(namespace, config_map)
    admin = yaml.safe_load(kubeconfig.read_text())
    server = urllib.parse.urlsplit(admin["clusters"][0]["cluster"]["server"])
    relay = Relay((server.hostname or "127.0.0.1", server.port or 443))
    admin["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{relay.port}"
    relayed = tmp_path / "relayed.kubeconfig"
    relayed.write_text(yaml.safe_dump(admin))
    caplog.set_level(logging.WARNING, logger="mailshard.proxy")
    routes, stop = start_sidecar("lone", namespace, relayed, tmp_path)

    def route_version() -> int | None:
        if not routes.exists():
            return None
        return next(int(line.split()[1]) for line in routes.read_text().splitlines() if line.startswith("version "))

    try:
        eventually(lambda: route_version() == 1 or None, timeout=30, what="the first table")
        relay.cut()
        moved = RoutingTable(
            version=2,
            slots=table.slots,
            shards={"s": ShardRoute(state=ShardState.SERVING, master="m", master_host="host-2")},
        )
        core.replace_namespaced_config_map(
            "lone-routing", namespace, {**config_map, "data": {TABLE_KEY: render_table(moved)}}
        )
        warned = eventually(
            lambda: [r.getMessage() for r in caplog.records if "keeping table version 1" in r.getMessage()] or None,
            timeout=30,
            what="a warning that the sidecar keeps table version 1",
        )
        assert route_version() == 1, warned  # the last good table keeps routing while the API is away
        assert "host-1" in routes.read_text()
        relay.restore()
        started = time.monotonic()
        eventually(lambda: route_version() == 2 or None, timeout=30, what="the table written while away")
        print(f"API back → the missed table applied in {time.monotonic() - started:.1f} s")
        assert "host-2" in routes.read_text()
    finally:
        stop.set()
        relay.close()
