"""The Helm chart on the real control plane: installed objects, the operator under the chart's identity, uninstall.

KWOK nodes run no containers, so the chart's Deployment gets pods that never
run our image. The operator therefore runs on the host, twice, exactly as the
Deployment's two replicas would: authenticated as the chart's ServiceAccount
(a TokenRequest token), with `--peering` on the chart's ClusterKopfPeering.

Order independence. The session's `crds` fixture applies crds/ with kubectl
(server-side) before any test here runs, so the CRDs always exist when the
chart is installed, whatever ran before: every install hands them over to
the release with `--take-ownership`, and `crds.keep=true` (the default) keeps
them on uninstall for the tests that run after. The session's standalone
operator, when running, is stopped while the chart's operators act, so that
only they can reconcile, and restarted afterwards.
"""

from __future__ import annotations

import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from operator_support import OPERATOR_USER, REPO, AuditLog, OperatorProcess, eventually, kubectl

from mailshard import rbac
from mailshard_harness.helm import helm
from mailshard_harness.identity import OPERATOR_ACCOUNT, service_account_kubeconfig

pytestmark = pytest.mark.integration

CHART = REPO / "charts" / "mailshard-operator"
RELEASE = "ms-chart"
NAMESPACE = "mailshard-chart"
FULLNAME = f"{RELEASE}-mailshard-operator"
CHART_USER = f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"
OUR_CRDS = ("mailshards.mailshard.io", "mailclusters.mailshard.io")
PEERING_CRDS = ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
GROUP, VERSION = "mailshard.io", "v1alpha1"


def uninstall(kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    return helm(kubeconfig, "uninstall", RELEASE, "--namespace", NAMESPACE, "--ignore-not-found", "--wait")


@pytest.fixture(scope="module")
def chart_namespace(api_client: client.ApiClient) -> Iterator[str]:
    """The release's namespace, enforcing Pod Security "restricted": pods that break it are refused."""
    core = client.CoreV1Api(api_client)
    labels = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn")}
    try:
        core.create_namespace({"metadata": {"name": NAMESPACE, "labels": labels}})
    except client.ApiException as exc:
        if exc.status != 409:
            raise
        core.patch_namespace(NAMESPACE, {"metadata": {"labels": labels}})
    yield NAMESPACE
    core.delete_namespace(NAMESPACE, propagation_policy="Background")


@pytest.fixture
def release(crds: None, chart_namespace: str, kubeconfig: Path) -> Iterator[str]:
    """The chart installed as the user would, with its defaults; uninstalled afterwards. Yields helm's output."""
    uninstall(kubeconfig)  # a leftover of an interrupted run against a long-lived cluster
    installed = helm(
        kubeconfig,
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        chart_namespace,
        "--take-ownership",  # the CRDs were applied with kubectl by the session's `crds` fixture
        "--set",
        "image.pullPolicy=Never",
        "--wait",
        "--timeout",
        "120s",
    )
    yield installed.stdout
    uninstall(kubeconfig)


def crd(api_client: client.ApiClient, name: str) -> client.V1CustomResourceDefinition:
    return client.ApiextensionsV1Api(api_client).read_custom_resource_definition(name)


def established(definition: client.V1CustomResourceDefinition) -> bool:
    return any(c.type == "Established" and c.status == "True" for c in definition.status.conditions or [])


def peering_status(api_client: client.ApiClient) -> dict[str, Any]:
    peering = client.CustomObjectsApi(api_client).get_cluster_custom_object(
        "kopf.dev", "v1", "clusterkopfpeerings", FULLNAME
    )
    status: dict[str, Any] = peering.get("status") or {}
    return status


def gone(read: Any, *args: str) -> bool:
    try:
        read(*args)
    except client.ApiException as exc:
        return bool(exc.status == 404)
    return False


def test_install_creates_crds_rbac_deployment_and_peering(api_client: client.ApiClient, release: str) -> None:
    assert "kubectl get ms,mc" in release  # NOTES.txt, rendered

    for name in OUR_CRDS:
        definition = crd(api_client, name)
        assert definition.metadata.annotations["helm.sh/resource-policy"] == "keep"
        assert definition.metadata.annotations["meta.helm.sh/release-name"] == RELEASE
        assert established(definition)
    for name in PEERING_CRDS:
        assert established(crd(api_client, name))

    authz = client.RbacAuthorizationV1Api(api_client)
    role = authz.read_cluster_role(FULLNAME)
    assert api_client.sanitize_for_serialization(role.rules) == rbac.cluster_role_rules()
    binding = authz.read_cluster_role_binding(FULLNAME)
    assert (binding.role_ref.kind, binding.role_ref.name) == ("ClusterRole", FULLNAME)
    assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [("ServiceAccount", FULLNAME, NAMESPACE)]
    assert FULLNAME != OPERATOR_ACCOUNT  # the other tests' identity keeps its own ClusterRole
    client.CoreV1Api(api_client).read_namespaced_service_account(FULLNAME, NAMESPACE)

    deployment = client.AppsV1Api(api_client).read_namespaced_deployment(FULLNAME, NAMESPACE)
    assert deployment.spec.replicas == 2
    (container,) = deployment.spec.template.spec.containers
    assert f"--peering={FULLNAME}" in container.args
    assert "--standalone" not in container.args
    assert container.image_pull_policy == "Never"
    # The namespace enforces Pod Security "restricted": the pods exist only because the spec meets it.
    pods = client.CoreV1Api(api_client).list_namespaced_pod(
        NAMESPACE, label_selector=f"app.kubernetes.io/instance={RELEASE}"
    )
    assert len(pods.items) == 2
    assert deployment.status.ready_replicas == 2  # KWOK reports them running; `helm --wait` waited for it

    assert peering_status(api_client) == {}  # no operator has joined the peering yet


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def shard_ready(api_client: client.ApiClient, namespace: str, name: str) -> bool:
    try:
        body = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "mailshards", name
        )
    except client.ApiException:
        return False
    conditions = (body.get("status") or {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def handled_objects(log: Path, since: int) -> list[str]:
    """The lines kopf logged about handling objects after byte `since`: none while a replica stands by."""
    with log.open("rb") as out:
        out.seek(since)
        return [line for line in out.read().decode().splitlines() if " kopf.objects " in line]


@pytest.mark.usefixtures("release")
def test_two_peered_operators_under_the_chart_identity_reconcile_the_examples(
    api_client: client.ApiClient,
    kubeconfig: Path,
    namespace: str,
    *,
    operator: OperatorProcess,
    audit: AuditLog,
    tmp_path: Path,
) -> None:
    identity = service_account_kubeconfig(api_client, kubeconfig, NAMESPACE, FULLNAME, tmp_path / "chart.kubeconfig")
    ports = {"replica-1": free_port(), "replica-2": free_port()}
    replicas = {
        pod: OperatorProcess(
            identity,
            tmp_path / f"{pod}.log",
            resync_seconds=3,
            # What the chart's Deployment runs, with the health port moved off 8080 for the host.
            args=("--peering", FULLNAME, "--liveness", f"http://127.0.0.1:{port}/healthz"),
            env={"POD_ID": pod},
        )
        for pod, port in ports.items()
    }
    operator.stop()  # only the chart's operators may reconcile now
    try:
        for pod, replica in replicas.items():
            replica.start()
            eventually(lambda pod=pod: pod in peering_status(api_client), what=f"{pod} in the peering object")
        peers = peering_status(api_client)
        active, standby = sorted(replicas, key=lambda pod: peers[pod]["priority"], reverse=True)
        assert peers[active]["priority"] != peers[standby]["priority"]
        if standby == "replica-1":  # it acted alone until replica-2 joined with a higher priority
            eventually(
                lambda: "Pausing operations in favour of" in replicas[standby].log.read_text(),
                what="the first replica pausing in favour of the second",
            )
        for pod, port in ports.items():
            eventually(lambda port=port: healthy(port), what=f"{pod}'s liveness endpoint")  # standby too

        mark, standby_mark = audit.mark(), replicas[standby].log.stat().st_size
        kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(REPO / "examples"))
        for name in ("dovecot-1", "cyrus-1"):
            eventually(lambda name=name: shard_ready(api_client, namespace, name), what=f"MailShard {name} Ready")
        writes = audit.writes(user=CHART_USER, namespace=namespace, since=mark)
        assert any(write.endswith(" statefulsets/dovecot-1-a") for write in writes), writes  # server-side apply
        assert audit.writes(user=OPERATOR_USER, namespace=namespace, since=mark) == []
        assert handled_objects(replicas[active].log, 0) != []
        assert handled_objects(replicas[standby].log, standby_mark) == [], "the standby acted"

        replicas[active].stop()  # a rollout or a drained node: the active replica says goodbye
        eventually(lambda: active not in peering_status(api_client), what="the stopped replica left the peering")
        scratch = yaml.safe_load((REPO / "examples" / "mailshard-dovecot.yaml").read_text())
        scratch["metadata"]["name"] = "scratch-1"
        kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(scratch))
        eventually(lambda: shard_ready(api_client, namespace, "scratch-1"), what="the standby took over")
        assert handled_objects(replicas[standby].log, standby_mark) != []
        replicas[standby].assert_running()
    finally:
        for replica in replicas.values():
            replica.stop()
        operator.start()


def test_uninstall_keeps_the_crds_and_with_them_the_shards(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str, release: str
) -> None:
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(REPO / "examples" / "mailcluster.yaml"))
    output = uninstall(kubeconfig).stdout
    assert "kept due to the resource policy" in output

    for name in (*OUR_CRDS, *PEERING_CRDS):
        assert established(crd(api_client, name)), f"{name} was removed with the release"
    client.CustomObjectsApi(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, "mailclusters", "demo")

    authz, apps = client.RbacAuthorizationV1Api(api_client), client.AppsV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    assert gone(authz.read_cluster_role, FULLNAME)
    assert gone(authz.read_cluster_role_binding, FULLNAME)
    assert gone(apps.read_namespaced_deployment, FULLNAME, NAMESPACE)
    assert gone(custom.get_cluster_custom_object, "kopf.dev", "v1", "clusterkopfpeerings", FULLNAME)
