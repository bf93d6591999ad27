"""`make demo`: the operator, the example shards and real mail through the proxy, in one command.

Where it runs, in order of preference:
- `KUBECONFIG` set: that cluster's current context (kind, say; `make e2e-kind`
  shows how our images get into it). The chart is installed there.
- this machine's real node (`node.py`), when it can run one (root and the
  node's Debian packages; `make demo` installs them and builds the images):
  started, or reused if `make e2e-up` left one running. The chart is installed
  with the images the node imported.
- otherwise the KWOK control plane (`cluster.py`), whose nodes run no
  containers: the operator runs on this machine under the chart's
  least-privilege identity, and the demo shows the control plane's side only
  (pairs, volumes, Services, status), saying why.

Where pods really run, the demo then delivers a message to every example user
over LMTP through the `demo-proxy` Service and reads each one back over IMAP
through it, from a client pod, and prints which shard and master served each
user.

On a single schedulable node the members of a pair cannot be kept apart, so
the example MailCluster is applied with `shardDefaults.podAntiAffinityType:
preferred` there, and the demo says so; the files in examples/ keep the safe
default.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from mailshard import __version__
from mailshard.api.routing import TABLE_KEY, parse_table, route_user
from mailshard_harness import build, processes, versions
from mailshard_harness.client_pod import ClientPod
from mailshard_harness.cluster import ClusterConfig, ClusterState, ControlPlane, runs_root
from mailshard_harness.errors import HarnessError
from mailshard_harness.helm import install_chart
from mailshard_harness.identity import install_operator_identity

DEMO_NAMESPACE = "demo"
INSTANCE = "demo"
CLUSTER = "demo"
RELEASE = "mailshard"
OPERATOR_NAMESPACE = "mailshard-system"
_READY_TIMEOUT_KWOK = 120.0
_USERS_TIMEOUT = 180.0
_READY_TIMEOUT_PODS = 420.0
"""Real pods on 2 cores: two pairs of mail servers and two proxies start side by side."""


def _repo() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "examples").is_dir() and (parent / "crds").is_dir():
            return parent
    raise HarnessError("cannot find the repository's examples/ and crds/ (run `make demo` from a checkout)")


def _kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [str(build.bin_path(versions.KUBECTL_BINARY)), f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise HarnessError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


@dataclass
class Target:
    """The cluster the demo uses, and whether its nodes run containers."""

    kubeconfig: Path
    runs_pods: bool
    local_images: bool
    """Our images were imported into the node: the chart must never try to pull them."""
    plane: ControlPlane | None = None
    how_to_stop: str = ""


def _real_node_unavailable() -> str | None:
    """Why this machine cannot run the real node, or None when it can."""
    if os.geteuid() != 0:
        return "not root"
    from mailshard_harness.node import missing_prerequisites

    missing = missing_prerequisites()
    if missing:
        return "missing " + ", ".join(sorted(missing)) + " (`make node-deps`)"
    from mailshard_harness.images import IMAGES, image_name
    from mailshard_harness.node_runtime import podman_image_id

    unbuilt = [name for name in IMAGES if podman_image_id(image_name(name)) is None]
    if unbuilt:
        return f"images not built: {', '.join(unbuilt)} (`make images`)"
    return None


def _target() -> Target:
    given = os.environ.get("KUBECONFIG")
    if given:
        _say(f"using the current context of KUBECONFIG={given}")
        return Target(Path(given), runs_pods=_has_real_nodes(Path(given)), local_images=False)
    why_not = _real_node_unavailable()
    if why_not is None:
        from mailshard_harness.node import NodeConfig, NodeHarness

        node = NodeHarness.running()
        if node is not None:
            _say("reusing this machine's running node")
            if node.import_images() is not None:
                _say("imported the images built since it started")
        else:
            _say("starting this machine's real node (containerd, kubelet, CoreDNS); stop it with `make e2e-down`")
            node = NodeHarness.start(NodeConfig())
        return Target(node.kubeconfig, runs_pods=True, local_images=True, how_to_stop="make e2e-down")
    _say(f"no real node here ({why_not}): KWOK nodes instead, which run no containers, so no mail will flow")
    directory = runs_root() / INSTANCE
    state = ClusterState.load(directory)
    if state is not None and state.running() and state.owner_alive():
        _say(f"reusing the running control plane {INSTANCE}")
        plane = ControlPlane(state)
    else:
        plane = ControlPlane.start(ClusterConfig(name=INSTANCE))
    return Target(
        plane.kubeconfig, runs_pods=False, local_images=False, plane=plane, how_to_stop="make cluster-down NAME=demo"
    )


def _has_real_nodes(kubeconfig: Path) -> bool:
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        nodes = client.CoreV1Api(api).list_node().items
    finally:
        api.close()
    return any((n.metadata.annotations or {}).get("kwok.x-k8s.io/node") != "fake" for n in nodes)


def _schedulable_nodes(api: client.ApiClient) -> int:
    count = 0
    for node in client.CoreV1Api(api).list_node().items:
        taints = [t for t in node.spec.taints or [] if t.effect in ("NoSchedule", "NoExecute")]
        if not node.spec.unschedulable and not taints:
            count += 1
    return count


def _install_operator(target: Target, repo: Path, api: client.ApiClient) -> None:
    if target.runs_pods:
        settings = {"image.tag": __version__}
        if target.local_images:
            settings["image.pullPolicy"] = "Never"
        _say(f"helm upgrade --install {RELEASE} charts/mailshard-operator --namespace {OPERATOR_NAMESPACE}")
        install_chart(
            target.kubeconfig,
            repo / "charts" / "mailshard-operator",
            release=RELEASE,
            namespace=OPERATOR_NAMESPACE,
            settings=settings,
        )
        return
    # KWOK runs no pods: the CRDs go in as the chart would install them, and the operator runs here.
    _kubectl(target.kubeconfig, "apply", "--server-side", "-f", str(repo / "crds"))
    for crd in ("mailshards.mailshard.io", "mailclusters.mailshard.io"):
        _kubectl(target.kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}")
    _start_host_operator(target, api)


def _start_host_operator(target: Target, api: client.ApiClient) -> None:
    directory = target.plane.directory if target.plane is not None else runs_root() / "demo-operator"
    directory.mkdir(parents=True, exist_ok=True)
    identity = install_operator_identity(api, target.kubeconfig, directory)
    state = target.plane.state if target.plane is not None else ClusterState(directory=directory)
    for record in state.processes:
        if record.name == "operator" and processes.is_ours(record, str(directory)):
            _say(f"the operator is already running (pid {record.pid})")
            return
    log = directory / "logs" / "operator.log"
    _, record = processes.spawn(
        "operator",
        [sys.executable, "-m", "mailshard", "run", "--standalone", "--liveness", "", f"--kubeconfig={identity}"],
        log=log,
    )
    state.processes = [p for p in state.processes if p.name != "operator"] + [record]
    state.save()
    _say(f"operator started on this machine (pid {record.pid}, log {log})")


def _apply_examples(target: Target, repo: Path, api: client.ApiClient) -> None:
    documents: list[dict[str, Any]] = []
    for path in sorted((repo / "examples").glob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    if target.runs_pods and _schedulable_nodes(api) < 2:
        _say("one schedulable node: the members of each pair share it (shardDefaults.podAntiAffinityType: preferred)")
        for document in documents:
            if document["kind"] == "MailCluster":
                document["spec"].setdefault("shardDefaults", {})["podAntiAffinityType"] = "preferred"
    _kubectl(
        target.kubeconfig,
        "apply",
        "--server-side",
        "--field-manager=mailshard-demo",
        "-n",
        DEMO_NAMESPACE,
        "-f",
        "-",
        stdin=yaml.safe_dump_all(documents),
    )


def _wait_ready(api: client.ApiClient, timeout: float) -> None:
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout
    pending: list[str] = []
    while time.monotonic() < deadline:
        pending = []
        for plural in ("mailshards", "mailclusters"):
            items: list[dict[str, Any]] = custom.list_namespaced_custom_object(
                "mailshard.io", "v1alpha1", DEMO_NAMESPACE, plural
            )["items"]
            for item in items:
                conditions = (item.get("status") or {}).get("conditions") or []
                if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                    pending.append(f"{item['kind']}/{item['metadata']['name']}")
        if not pending:
            return
        time.sleep(0.5)
    raise HarnessError(f"not Ready after {timeout:.0f} s: {', '.join(pending)}")


def _demo_users(repo: Path) -> list[tuple[str, str]]:
    """(user, password) of every line of the example users Secret."""
    users = []
    for document in yaml.safe_load_all((repo / "examples" / "mailcluster.yaml").read_text()):
        if document and document.get("kind") == "Secret":
            for line in document["stringData"]["passwd"].splitlines():
                user, secret = line.split(":")[:2]
                users.append((user, secret.removeprefix("{PLAIN}")))
    return users


def _deliver_to_all(pod: ClientPod, proxy: str, users: list[str], tag: str) -> None:
    """One LMTP delivery to each user, retried for those the shard does not know yet.

    A member reads its users from the `<shard>-users` Secret mounted as a volume; one written after the pod
    started reaches it at the kubelet's next sync, up to about a minute later. Until then: 550, no such user.
    """
    deadline = time.monotonic() + _USERS_TIMEOUT
    pending = list(users)
    attempt = 0
    while pending:
        delivered = pod.run_json("deliver", "--host", proxy, "--count", str(len(pending)), "--tag", tag, *pending)
        pending = sorted({user for user, _, _ in delivered["refused"]})
        if not pending:
            return
        if time.monotonic() > deadline:
            raise HarnessError(f"deliveries refused through the proxy: {delivered['refused']}")
        _say(f"not yet known to their shard: {', '.join(pending)} (a new users Secret reaches a pod within a minute)")
        time.sleep(10)
        attempt += 1
        tag = f"{tag.split('~', maxsplit=1)[0]}~{attempt}"


def _mail_round_trip(repo: Path, api: client.ApiClient) -> None:
    """One message per user in over LMTP and back over IMAP, both through the proxy Service."""
    users = _demo_users(repo)
    core = client.CoreV1Api(api)
    pod = ClientPod(api, DEMO_NAMESPACE, f"mailshard/dovecot:{__version__}", name="demo-mail-client")
    if not pod.is_ready():
        try:
            pod.create()
        except client.ApiException as exc:
            if exc.status != 409:
                raise
        pod.wait_ready()
    proxy = f"{CLUSTER}-proxy.{DEMO_NAMESPACE}.svc.cluster.local"
    tag = f"demo-{int(time.time())}"
    _say(f"delivering one message to each of {len(users)} users over LMTP through {proxy}:24")
    _deliver_to_all(pod, proxy, [user for user, _ in users], tag)
    _say(f"reading them back over IMAP through {proxy}:143")
    found = pod.run_json("inventory", "--host", proxy, *(f"{u}:{p}" for u, p in users))
    table = parse_table(core.read_namespaced_config_map(f"{CLUSTER}-routing", DEMO_NAMESPACE).data[TABLE_KEY])
    print(f"\nMail through the proxy (routing table version {table.version}):")
    print(f"{'USER':<22} {'SLOT':>5}  {'SHARD':<11} {'MASTER':<13} {'UID':>4}  MESSAGE-ID")
    missing = []
    for user, _ in users:
        decision = route_user(table, user)
        inbox = found[user]
        uids = [uid for uid, mid in inbox.get("messages", {}).items() if mid.startswith(f"<{tag}")]
        if not uids:
            missing.append(f"{user}: {inbox.get('error', 'not in INBOX')}")
            continue
        master = (decision.route.master if decision.route is not None else None) or "-"
        shard = decision.shard or "-"
        message_id = inbox["messages"][uids[0]]
        print(f"{user:<22} {decision.slot:>5}  {shard:<11} {master:<13} {uids[0]:>4}  {message_id}")
    if missing:
        raise HarnessError("delivered but not read back through the proxy: " + "; ".join(missing))
    print()


def run_demo() -> int:
    repo = _repo()
    started = time.monotonic()
    target = _target()
    api = config.new_client_from_config(config_file=str(target.kubeconfig))
    namespaces = json.loads(_kubectl(target.kubeconfig, "get", "namespaces", "-o", "json"))["items"]
    _install_operator(target, repo, api)
    if DEMO_NAMESPACE not in {n["metadata"]["name"] for n in namespaces}:
        _kubectl(target.kubeconfig, "create", "namespace", DEMO_NAMESPACE)
    _apply_examples(target, repo, api)
    _wait_ready(api, _READY_TIMEOUT_PODS if target.runs_pods else _READY_TIMEOUT_KWOK)
    _say(f"all example shards and the cluster Ready {time.monotonic() - started:.1f} s after start")
    if target.runs_pods:
        _mail_round_trip(repo, api)
    print(_kubectl(target.kubeconfig, "get", "ms,mc", "-n", DEMO_NAMESPACE))
    print(_kubectl(target.kubeconfig, "get", "pods,pvc,services", "-n", DEMO_NAMESPACE, "-o", "wide"))
    print(f"export KUBECONFIG={target.kubeconfig}")
    print(f"kubectl: {build.bin_path(versions.KUBECTL_BINARY)}")
    if target.how_to_stop:
        print(f"stop it with: {target.how_to_stop}")
    return 0
