"""One real Kubernetes node on this machine, offline: the e2e tier's cluster.

KWOK nodes (the integration tier) run no containers. The e2e tier needs pods
that really run our images, get IPs, resolve Service names and mount local
volumes. So this starts, on one host and without any registry:

- the harness' control plane (`cluster.py`) in node mode: kube-apiserver bound
  to the node bridge's address, so pods reach it through the `kubernetes`
  Service, and no KWOK nodes;
- containerd + runc (`node_runtime.py`) with our images imported;
- a bridge and a CNI config for it (`node_network.py`);
- a real kubelet, authenticated as `system:node:<name>`, and kube-proxy in
  iptables mode that leaves the conntrack sysctls alone;
- CoreDNS as a Deployment behind 10.96.0.10 (`node_addons.py`);
- the local-volume provisioner, which here creates each PV's directory.

A node needs root and changes host-wide state (sysctls, iptables, cgroups,
mounts, a bridge), so there is one per machine (a lock file guards starts and
stops), a snapshot of that state is taken before the first change
(`node_host.HostSnapshot`), a stop always restores it and compares, and the next
start first removes whatever a crashed run left. A start by pytest is owned by
the pytest process: its children die with it, and the next start treats the
node as stale.

    python -m mailshard_harness node-up | node-down | node-status
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mailshard_harness import build, node_host, node_network, node_runtime, processes, versions
from mailshard_harness.cluster import SERVICE_CIDR, ClusterConfig, ClusterState, ControlPlane
from mailshard_harness.errors import HarnessError, log_tail
from mailshard_harness.node_addons import (
    CLUSTER_DOMAIN,
    DNS_NAME,
    DNS_NAMESPACE,
    DNS_SERVICE_IP,
    coredns_manifests,
    kubelet_api_access,
)
from mailshard_harness.node_host import HostSnapshot
from mailshard_harness.node_network import NodeNetwork
from mailshard_harness.node_runtime import Ctr, RuntimePaths
from mailshard_harness.pki import KUBE_PROXY_IDENTITY, ClusterPKI, node_identity
from mailshard_harness.processes import ProcessRecord
from mailshard_harness.testing import kubectl_apply

NODE_NAME = "mailshard-node"
LOCK_PATH = Path("/run/lock/mailshard-node.lock")
"""Machine-wide, not per cache: the bridge, iptables and sysctls are the machine's."""
STATE_FILE = "node-state.json"
BASELINE_FILE = "host-before.json"
_READY_TIMEOUT = 120.0


def node_root() -> Path:
    return build.cache_root() / "node"


def _say(message: str) -> None:
    print(f"[node] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------ prerequisites

_TOOLS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "iptables-save": "iptables",
    "iptables-restore": "iptables",
    "ip6tables": "iptables",
    "ip": "iproute2",
    "podman": "podman",
    "gcc": "gcc",
    "umount": "mount",
}


def missing_prerequisites(
    which: Callable[[str], str | None] = shutil.which, exists: Callable[[Path], bool] = Path.exists
) -> dict[str, list[str]]:
    """Debian package → what of it is missing (tools on PATH, CNI plugins, the static libc)."""
    missing: dict[str, list[str]] = {}
    for tool, package in _TOOLS.items():
        if which(tool) is None:
            missing.setdefault(package, []).append(tool)
    for plugin in node_network.CNI_PLUGINS:
        if not exists(node_network.CNI_PLUGIN_DIR / plugin):
            missing.setdefault("containernetworking-plugins", []).append(str(node_network.CNI_PLUGIN_DIR / plugin))
    for libc in (Path("/usr/lib/x86_64-linux-gnu/libc.a"), Path("/usr/lib/aarch64-linux-gnu/libc.a")):
        if exists(libc):
            break
    else:
        missing.setdefault("libc6-dev", []).append("libc.a (for gcc -static)")
    return missing


def check_prerequisites() -> None:
    """Say exactly what is missing, before anything on the host changes."""
    if os.geteuid() != 0:
        raise HarnessError("the real-node harness needs root (it runs containerd and a kubelet)")
    missing = missing_prerequisites()
    if missing:
        what = "; ".join(f"{package} ({', '.join(items)})" for package, items in sorted(missing.items()))
        raise HarnessError(
            f"the real-node harness is missing: {what}. "
            f"Install them with `make node-deps` (apt-get install {' '.join(sorted(missing))})"
        )
    if not Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
        raise HarnessError("net.bridge.bridge-nf-call-iptables is missing: load br_netfilter (`modprobe br_netfilter`)")
    hierarchies = {p.name for p in node_host.cgroup_hierarchies()}
    if not {"memory", "cpu"} <= hierarchies and not any(p.name == "cgroup" for p in node_host.cgroup_hierarchies()):
        raise HarnessError("no cgroup v1 memory and cpu hierarchies under /sys/fs/cgroup (kubelet needs them)")


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """One node start or stop at a time on this machine."""
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with LOCK_PATH.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"another node start or stop holds {LOCK_PATH}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# -------------------------------------------------------------------- state


@dataclass
class NodeConfig:
    """What to start. `owner_pid` makes the node die with (and be reaped after) that process."""

    owner_pid: int | None = None
    subnet: str = field(default_factory=lambda: os.environ.get("MAILSHARD_NODE_SUBNET", node_network.DEFAULT_SUBNET))
    name: str = NODE_NAME
    root: Path | None = None


@dataclass
class NodeState:
    """What `node-state.json` holds: enough to find, use and stop the running node."""

    owner_pid: int | None = None
    owner_start_ticks: int | None = None
    name: str = NODE_NAME
    subnet: str = node_network.DEFAULT_SUBNET
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[ProcessRecord] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        data = asdict(self)
        data["processes"] = [p.to_json() for p in self.processes]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> NodeState | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        data["processes"] = [ProcessRecord.from_json(p) for p in data.get("processes", [])]
        return cls(**data)

    def owner_alive(self) -> bool:
        return self.owner_pid is None or processes.start_ticks(self.owner_pid) == self.owner_start_ticks


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------ harness


class NodeHarness:
    """Start, use and stop the machine's one real node. Usable from the CLI and from a pytest fixture."""

    def __init__(self, root: Path, state: NodeState) -> None:
        self.root = root.resolve()
        self.state = state
        self.network = NodeNetwork(subnet=state.subnet)
        self.runtime = RuntimePaths(root=self.root / "containerd" / "root", run=self.run_dir)
        self.binaries: dict[str, Path] = {}
        self._plane: ControlPlane | None = None
        self._children: list[subprocess.Popen[bytes]] = []

    # ---------------------------------------------------------------- paths

    @property
    def run_dir(self) -> Path:
        """Everything of one run; its path is the marker in every process' command line."""
        return self.root / "run"

    @property
    def cluster_dir(self) -> Path:
        return self.run_dir / "cluster"

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    @property
    def kubeconfig(self) -> Path:
        return self.cluster_dir / "kubeconfig"

    @property
    def pod_logs(self) -> Path:
        return self.run_dir / "pod-logs"

    @property
    def volumes_dir(self) -> Path:
        return self.run_dir / "volumes"

    @property
    def marker(self) -> str:
        return str(self.run_dir)

    def _owned_dirs(self) -> list[Path]:
        return [self.run_dir, self.runtime.root]

    def snapshot(self) -> HostSnapshot:
        """The host as far as a node can change it (see `node_host.HostSnapshot`)."""
        return HostSnapshot.take(
            marker=self.marker,
            directories=self._owned_dirs(),
            bridge=self.network.bridge,
            chains=node_network.owned_chains() + node_network.owned_rules(),
        )

    # ------------------------------------------------------------ discovery

    @classmethod
    def running(cls, root: Path | None = None) -> NodeHarness | None:
        """The node running on this machine (owner alive, components up), if any."""
        root = (root or node_root()).resolve()
        state = NodeState.load(root / "run" / STATE_FILE)
        if state is None or not state.owner_alive():
            return None
        node = cls(root, state)
        if not any(processes.is_ours(p, node.marker) for p in state.processes):
            return None
        return node

    # ---------------------------------------------------------------- start

    @classmethod
    def start(cls, config: NodeConfig) -> NodeHarness:
        check_prerequisites()
        root = (config.root or node_root()).resolve()
        owner_ticks = processes.start_ticks(config.owner_pid) if config.owner_pid else None
        state = NodeState(
            owner_pid=config.owner_pid, owner_start_ticks=owner_ticks, name=config.name, subnet=config.subnet
        )
        node = cls(root, state)
        _ = node.network.network  # validates the subnet before anything changes
        with machine_lock():
            if cls.running(root) is not None:
                raise HarnessError("a node is already running on this machine; stop it first (`make e2e-down`)")
            owner = node_network.bridge_owner(node.network.bridge)
            if owner not in (None, str(root)):
                raise HarnessError(
                    f"bridge {node.network.bridge} exists and is not this harness' ({owner or 'no harness alias'}); "
                    f"delete it (`ip link del {node.network.bridge}`) or set MAILSHARD_NODE_SUBNET and stop its owner"
                )
            node._clean_leftovers()
            node._prepare()
            try:
                node._start()
            except BaseException:
                _say("start failed; tearing the node down")
                with contextlib.suppress(Exception):
                    node._teardown()
                raise
        return node

    def exists(self) -> bool:
        """Whether anything of a node is here, running or left by a crash."""
        return (
            (self.run_dir / STATE_FILE).exists()
            or (self.root / BASELINE_FILE).exists()
            or self.run_dir.exists()
            or node_network.bridge_owner(self.network.bridge) == str(self.root)
            or bool(node_host.cgroup_dirs())
        )

    def _clean_leftovers(self) -> None:
        """Whatever a crashed or killed run left: processes, mounts, chains, bridge, sysctls, cgroups."""
        if not self.exists():
            return
        stale = NodeState.load(self.run_dir / STATE_FILE)
        _say("cleaning up what a previous run left behind")
        if stale is not None:
            self.network = NodeNetwork(subnet=stale.subnet)
        for problem in self._teardown():
            _say(f"warning: {problem}")
        # Whatever else differs from that run's baseline was not ours to put back; start from here.
        (self.root / BASELINE_FILE).unlink(missing_ok=True)
        hard = [
            *(f"still mounted: {p}" for p in node_host.mounts_under(self._owned_dirs())),
            *(f"process {pid} still running" for pid in node_host.processes_with_marker(self.marker)),
            *(["bridge still there"] if node_network.bridge_owner(self.network.bridge) is not None else []),
            *(f"cgroup {p} still there" for p in node_host.cgroup_dirs()),
        ]
        self.network = NodeNetwork(subnet=self.state.subnet)
        if hard:
            raise HarnessError("could not clean up a previous node run: " + "; ".join(hard))

    def _prepare(self) -> None:
        """Everything slow or fallible that changes nothing on the host: binaries and images."""
        wanted = (*versions.CONTROL_PLANE_BINARIES, *versions.NODE_BINARIES)
        self.binaries = build.ensure_binaries(wanted)
        build.ensure_etcd()
        self.run_dir.mkdir(parents=True)
        self.logs.mkdir()
        node_runtime.ensure_harness_images(self.logs / "images.log")
        missing = node_runtime.missing_app_images()
        if missing:
            raise HarnessError(f"images {', '.join(missing)} are not built: run `make images` first")

    def _start(self) -> None:
        started = time.monotonic()
        wall_started = time.time()
        owned = self.state.owner_pid is not None
        timings = self.state.timings
        # Before the first change to the host: what to restore and compare against at stop.
        baseline = self.snapshot()
        (self.root / BASELINE_FILE).write_text(json.dumps(asdict(baseline), indent=2))
        self._save()

        node_host.create_cgroup_root()
        node_network.check_subnet_free(self.network)
        node_network.create_bridge(self.network, str(self.root))
        gateway = self.network.gateway
        node_network.write_cni_config(
            self.network, self.runtime.cni_conf_dir, service_cidr=SERVICE_CIDR, ipam_dir=self.run_dir / "cni" / "ipam"
        )

        containerd = self._start_containerd(cri=True, owned=owned)
        imported = self.import_images()
        if imported is not None:
            timings["image_import_s"] = round(imported, 1)
        timings["runtime_ready_s"] = round(time.monotonic() - started, 1)

        watched = [("containerd", containerd)]

        def start_node_components(plane: ControlPlane) -> None:
            # While the controller-manager and scheduler start, the kubelet registers and gets Ready.
            self._plane = plane
            timings["apiserver_ready_s"] = round(time.monotonic() - started, 1)
            kubelet_config = plane.write_kubeconfig(identity.file_stem, self.run_dir / "kubelet.kubeconfig")
            proxy_config = plane.write_kubeconfig(KUBE_PROXY_IDENTITY.file_stem, self.run_dir / "kube-proxy.kubeconfig")
            self.state.ports.update(
                kubelet=_free_port(gateway),
                kubelet_healthz=_free_port("127.0.0.1"),
                proxy_healthz=_free_port("127.0.0.1"),
                proxy_metrics=_free_port("127.0.0.1"),
            )
            watched.append(("kubelet", self._spawn("kubelet", self._kubelet_argv(kubelet_config), owned)))
            watched.append(("kube-proxy", self._spawn("kube-proxy", self._proxy_argv(proxy_config), owned)))

        identity = node_identity(self.state.name)
        self._plane = ControlPlane.start(
            ClusterConfig(
                name="node",
                nodes=0,
                owner_pid=self.state.owner_pid,
                directory=self.cluster_dir,
                bind_address=gateway,
                client_identities=(identity, KUBE_PROXY_IDENTITY),
                volumes_dir=self.volumes_dir,
                after_apiserver=start_node_components,
            )
        )
        timings["control_plane_ready_s"] = round(time.monotonic() - started, 1)
        self._apply(
            [*kubelet_api_access("kube-apiserver-kubelet-client"), *coredns_manifests(node_runtime.coredns_image())]
        )
        self._wait("the node to be Ready", self._node_ready, watched)
        # The kubelet may have been Ready before the control plane finished starting: its own timestamp says
        # when, in whole seconds, so the next second is an upper bound.
        ready_by = self._ready_since() + 1.0 - wall_started
        timings["node_ready_s"] = round(min(time.monotonic() - started, ready_by), 1)
        _say(f"node {self.state.name} Ready after {timings['node_ready_s']} s")
        self._wait("CoreDNS to be ready", self._dns_ready, watched)
        timings["dns_ready_s"] = round(time.monotonic() - started, 1)
        self._save()
        _say(f"CoreDNS ready after {timings['dns_ready_s']} s; export KUBECONFIG={self.kubeconfig}")

    # ----------------------------------------------------------- components

    def import_images(self) -> float | None:
        """Import into the node's containerd each image podman holds a newer build of; seconds spent, or None.

        A running node keeps the images it imported at start; after `make images` this brings the new
        builds in (pods started before keep the old ones until they are recreated).
        """
        ctr = Ctr(self.runtime.socket, self.logs / "ctr.log")
        return node_runtime.import_images(ctr, self.runtime, self.logs / "images.log")

    def _save(self) -> None:
        self.state.save(self.run_dir / STATE_FILE)

    def _spawn(self, name: str, argv: list[str], owned: bool) -> subprocess.Popen[bytes]:
        child, record = processes.spawn(name, argv, log=self.logs / f"{name}.log", die_with_parent=owned)
        self._children.append(child)
        self.state.processes.append(record)
        self._save()
        return child

    def _start_containerd(self, *, cri: bool, owned: bool) -> subprocess.Popen[bytes]:
        self.runtime.state.mkdir(parents=True, exist_ok=True)
        self.runtime.root.mkdir(parents=True, exist_ok=True)
        config = self.runtime.config if cri else self.runtime.config.with_name("maintenance.toml")
        config.write_text(node_runtime.containerd_config(self.runtime, cri=cri))
        if cri:
            # From now on containers may exist in the persistent metadata until a clean stop deletes them.
            (self.runtime.root.parent / node_runtime.DIRTY_MARKER).touch()
        name = "containerd" if cri else "containerd-maintenance"
        child = self._spawn(name, ["containerd", f"--config={config}"], owned)
        ctr = Ctr(self.runtime.socket, self.logs / "ctr.log")
        self._wait(name, ctr.ready, [(name, child)], timeout=30)
        return child

    def _kubelet_config(self) -> Path:
        pki = ClusterPKI(self.cluster_dir / "pki")
        resolv = self.run_dir / "resolv.conf"
        # Pods get cluster DNS only: no host search domains, no upstream.
        resolv.write_text("# no upstream resolvers: this machine has no network beyond loopback\n")
        self.pod_logs.mkdir(exist_ok=True)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{node_host.CGROUP_NAME}",
            "address": self.network.gateway,
            "port": self.state.ports["kubelet"],
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.state.ports["kubelet_healthz"],
            "podLogsDir": str(self.pod_logs),
            "containerRuntimeEndpoint": f"unix://{self.runtime.socket}",
            "imageServiceEndpoint": f"unix://{self.runtime.socket}",
            "clusterDNS": [DNS_SERVICE_IP],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(resolv),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki.ca_cert)},
            },
            "authorization": {"mode": "Webhook"},
            # "0%" disables a threshold: a full-ish test disk must not evict the pods under test.
            "evictionHard": {
                signal: "0%"
                for signal in (
                    "memory.available",
                    "nodefs.available",
                    "nodefs.inodesFree",
                    "imagefs.available",
                    "imagefs.inodesFree",
                )
            },
            # Our images cannot be pulled again: never garbage-collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "failSwapOn": False,
            # Lowering its own OOM score needs CAP_SYS_RESOURCE, which root lacks here.
            "oomScoreAdj": 0,
            "serializeImagePulls": False,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "syncFrequency": "10s",
            "nodeStatusUpdateFrequency": "4s",
            "maxPods": 110,
        }
        path = self.run_dir / "kubelet-config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def _kubelet_argv(self, kubeconfig: Path) -> list[str]:
        return [
            str(self.binaries["kubelet"]),
            f"--config={self._kubelet_config()}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={self.run_dir / 'kubelet'}",
            f"--cert-dir={self.run_dir / 'kubelet' / 'pki'}",
            f"--hostname-override={self.state.name}",
            f"--node-ip={self.network.gateway}",
            "--node-labels=topology.kubernetes.io/zone=zone-a",
            "--v=1",
        ]

    def _proxy_argv(self, kubeconfig: Path) -> list[str]:
        ports = self.state.ports
        return [
            str(self.binaries["kube-proxy"]),
            f"--kubeconfig={kubeconfig}",
            f"--hostname-override={self.state.name}",
            "--proxy-mode=iptables",
            f"--bind-address={self.network.gateway}",
            f"--cluster-cidr={self.network.subnet}",
            # NodePorts only on the bridge: never on the machine's real interfaces.
            f"--nodeport-addresses={self.network.subnet}",
            # 0 leaves the host's conntrack sysctls as they are.
            "--conntrack-max-per-core=0",
            "--conntrack-min=0",
            "--conntrack-tcp-timeout-established=0s",
            "--conntrack-tcp-timeout-close-wait=0s",
            f"--healthz-bind-address=127.0.0.1:{ports['proxy_healthz']}",
            f"--metrics-bind-address=127.0.0.1:{ports['proxy_metrics']}",
            "--v=1",
        ]

    def _apply(self, manifests: list[dict[str, Any]]) -> None:
        kubectl_apply(
            self.kubeconfig, manifests, cache_dir=self.run_dir / "kube-cache", what="the node's add-ons (CoreDNS, RBAC)"
        )

    # -------------------------------------------------------------- waiting

    def _wait(
        self,
        what: str,
        ready: Callable[[], bool],
        watched: list[tuple[str, subprocess.Popen[bytes]]],
        *,
        timeout: float = _READY_TIMEOUT,
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for name, child in watched:
                code = child.poll()
                if code is not None:
                    log = self.logs / f"{name}.log"
                    raise HarnessError(
                        f"{name} exited with code {code} while waiting for {what}; last lines:\n{log_tail(log)}\n", log
                    )
            with contextlib.suppress(Exception):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise HarnessError(f"timed out after {timeout:.0f} s waiting for {what}", self.logs / "kubelet.log")
            time.sleep(0.1)

    def _api_get(self, path: str) -> dict[str, Any]:
        if self._plane is None:
            raise HarnessError("the node's control plane is not started by this process")
        return self._plane.api_get(path)

    def _node_ready(self) -> bool:
        node = self._api_get(f"/api/v1/nodes/{self.state.name}")
        conditions = node.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _ready_since(self) -> float:
        node = self._api_get(f"/api/v1/nodes/{self.state.name}")
        ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
        return datetime.datetime.fromisoformat(ready["lastTransitionTime"].replace("Z", "+00:00")).timestamp()

    def _dns_ready(self) -> bool:
        deployment = self._api_get(f"/apis/apps/v1/namespaces/{DNS_NAMESPACE}/deployments/{DNS_NAME}")
        return int(deployment.get("status", {}).get("readyReplicas") or 0) >= 1

    # ----------------------------------------------------------------- stop

    def stop(self) -> list[str]:
        """Tear everything down; returns how the host differs from before the start (empty: left nothing)."""
        with machine_lock():
            problems = self._teardown()
        return problems

    def _teardown(self) -> list[str]:
        """Stop and remove everything this node owns, running or left by a crash, then compare with the baseline."""
        problems: list[str] = []
        marker = self.marker
        state = NodeState.load(self.run_dir / STATE_FILE) or self.state
        records = state.processes
        # kubelet first, or it restarts the containers being removed; the control plane meanwhile.
        processes.stop([r for r in records if r.name in ("kubelet", "kube-proxy")], marker, children=self._children)
        plane = threading.Thread(target=self._stop_control_plane, name="stop-control-plane")
        plane.start()
        ctr = Ctr(self.runtime.socket, self.logs / "ctr.log") if self.logs.is_dir() else None
        if ctr is not None and ctr.ready():
            try:
                ctr.remove_all_containers()
                (self.runtime.root.parent / node_runtime.DIRTY_MARKER).unlink(missing_ok=True)
            except HarnessError as error:
                problems.append(str(error))
        processes.stop(list(reversed(records)), marker, children=self._children)
        # Shims and anything else still naming our run directory, then the pods' own processes.
        node_host.kill_processes(node_host.processes_with_marker(marker))
        node_host.remove_cgroup_root()
        plane.join()
        still_mounted = node_host.unmount_under(self._owned_dirs())
        if not still_mounted and (self.runtime.root.parent / node_runtime.DIRTY_MARKER).exists():
            problems += self._clean_container_metadata()
            still_mounted = node_host.unmount_under(self._owned_dirs())
        if still_mounted:
            problems.append(f"still mounted: {', '.join(map(str, still_mounted))}")
        node_network.delete_bridge(self.network, str(self.root))

        baseline_path = self.root / BASELINE_FILE
        baseline: HostSnapshot | None = None
        with contextlib.suppress(OSError, ValueError, TypeError):
            baseline = HostSnapshot(**json.loads(baseline_path.read_text()))
        if baseline is not None:
            try:
                node_network.remove_new_chains(baseline.chains)
            except HarnessError as error:
                problems.append(str(error))
            for line in node_host.restore_sysctls(baseline.sysctls):
                _say(f"restored sysctl {line}")
        node_host.remove_container_log_links(self.pod_logs)
        node_host.remove_cni_cache(node_network.CNI_NETWORK, self.run_dir)
        for directory in (node_host.CONTAINERD_SHIM_DIR / "s", node_host.KUBELET_DEVICE_PLUGINS):
            node_host.remove_dead_sockets(directory)
        if baseline is not None:
            before = set(baseline.files)
            for path in node_host.HOST_PATHS:
                node_host.remove_if_created(path, str(path) in before)
        if not node_host.mounts_under([self.run_dir]):
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if baseline is not None:
            differences = baseline.differences(self.snapshot())
            problems += differences
            if not differences:
                baseline_path.unlink(missing_ok=True)
        return problems

    def _stop_control_plane(self) -> None:
        plane = self._plane or ControlPlane(ClusterState.load(self.cluster_dir) or ClusterState(self.cluster_dir))
        # Also removes its data dir and etcd's tmpfs data.
        plane.stop()

    def _clean_container_metadata(self) -> list[str]:
        """After a crash: delete leftover containers from the persistent root with a CRI-less containerd."""
        self.logs.mkdir(parents=True, exist_ok=True)
        problems = []
        try:
            self._start_containerd(cri=False, owned=True)
            removed = Ctr(self.runtime.socket, self.logs / "ctr.log").remove_all_containers()
            (self.runtime.root.parent / node_runtime.DIRTY_MARKER).unlink(missing_ok=True)
            if removed:
                _say(f"removed {len(removed)} leftover containers from containerd's metadata")
        except HarnessError as error:
            problems.append(f"could not clean containerd's metadata: {error}")
        finally:
            records = [r for r in self.state.processes if r.name == "containerd-maintenance"]
            processes.stop(records, self.marker, children=self._children)
            self.state.processes = [r for r in self.state.processes if r.name != "containerd-maintenance"]
        return problems

    # ---------------------------------------------------------------- report

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory of every process of the node (control plane, runtime, shims, pods), by name."""
        pids = set(node_host.processes_with_marker(self.marker))
        for directory in node_host.cgroup_dirs():
            for procs in directory.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in procs.read_text().split())
        usage: dict[str, int] = {}
        for pid in pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                name = Path(f"/proc/{pid}/comm").read_text().strip()
                pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
                usage[name] = usage.get(name, 0) + pages * os.sysconf("SC_PAGE_SIZE")
        return usage


__all__ = ["NODE_NAME", "NodeConfig", "NodeHarness", "NodeState", "check_prerequisites", "missing_prerequisites"]
