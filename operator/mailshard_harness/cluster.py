"""One real control plane on loopback: etcd, kube-apiserver, controller-manager, scheduler, KWOK.

Every claim the operator makes about Kubernetes is proven against this. It is
real Kubernetes (TLS, RBAC, admission, the real controllers and scheduler);
only kubelets are simulated, by KWOK, on fake nodes.

Each instance lives in its own directory with its own ports, picked free at
start, so two instances can run at once. `state.json` in that directory
records every process (PID plus kernel start time) and the owner: the pytest
process that started it, or nobody for a shell-started (`cluster-up`)
instance. An instance whose owner has died is stale; the next start anywhere
reaps it, touching only processes whose command line names its directory.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mailshard_harness import build, processes
from mailshard_harness.errors import HarnessError, log_tail
from mailshard_harness.pki import ClientIdentity, ClusterPKI, create_pki
from mailshard_harness.processes import ProcessRecord
from mailshard_harness.storage import STORAGE_CLASS_NAME, storage_class_manifest
from mailshard_harness.testing import kubectl_apply

SERVICE_CIDR = "10.96.0.0/16"
POD_RANGE = ipaddress.IPv4Network("127.64.0.0/10")
"""Loopback, on purpose: the operator polls each pod's agent at its pod IP, and traffic must stay on this
machine. Nothing listens there unless a test starts a real agent on a KWOK pod's IP (`local_agents`)."""
POD_BLOCK_PREFIX = 20
"""Each instance gets its own /20 of POD_RANGE (4,094 pods, enough for the 1,000-shard bench): two test
sessions side by side would otherwise hand out the same pod IPs, and their agents would collide."""


def pod_cidr(instance: str) -> str:
    """The pod CIDR of one harness instance, in KWOK's notation (from .1, so no pod gets the network address)."""
    blocks = list(POD_RANGE.subnets(new_prefix=POD_BLOCK_PREFIX))
    block = blocks[zlib.crc32(instance.encode()) % len(blocks)]
    return f"{block.network_address + 1}/{POD_BLOCK_PREFIX}"


KWOK_NODE_IP = "127.63.0.1"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
STATE_FILE = "state.json"
_START_TIMEOUT = 60.0


def runs_root() -> Path:
    return build.cache_root() / "run"


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _say(message: str) -> None:
    print(f"[harness] {message}", file=sys.stderr, flush=True)


@dataclass
class ClusterConfig:
    """What to start. `owner_pid` makes the instance die with (and be reaped after) that process."""

    name: str = "default"
    nodes: int = 3
    pods_per_node: int = 1000
    owner_pid: int | None = None
    directory: Path | None = None
    api_port: int | None = None
    """A fixed apiserver port (e.g. for a stable kubeconfig); free ports are picked when None."""
    bind_address: str = "127.0.0.1"
    """Where kube-apiserver listens and what it advertises. The real-node tier binds it to its bridge's IP
    so pods reach it through the `kubernetes` Service; anything but loopback publishes that endpoint."""
    client_identities: tuple[ClientIdentity, ...] = ()
    """Client certificates to issue besides the components' own (the real node's kubelet, kube-proxy)."""
    volumes_dir: Path | None = None
    """When set, the provisioner creates each local PV's directory under it (a real kubelet mounts it)."""
    after_apiserver: Callable[[ControlPlane], None] | None = None
    """Called as soon as kube-apiserver is ready (the real node starts its kubelet there, not seconds later)."""

    @property
    def instance_dir(self) -> Path:
        return self.directory or runs_root() / self.name


@dataclass
class ClusterState:
    """What `state.json` holds: enough to find, use and stop a running instance."""

    directory: Path
    owner_pid: int | None = None
    owner_start_ticks: int | None = None
    api_port: int = 0
    api_host: str = "127.0.0.1"
    etcd_port: int = 0
    nodes: list[str] = field(default_factory=list)
    processes: list[ProcessRecord] = field(default_factory=list)

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def api_url(self) -> str:
        return f"https://{self.api_host}:{self.api_port}"

    def save(self) -> None:
        data = {
            "owner_pid": self.owner_pid,
            "owner_start_ticks": self.owner_start_ticks,
            "api_port": self.api_port,
            "api_host": self.api_host,
            "etcd_port": self.etcd_port,
            "nodes": self.nodes,
            "processes": [p.to_json() for p in self.processes],
        }
        tmp = self.directory / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.directory / STATE_FILE)

    @classmethod
    def load(cls, directory: Path) -> ClusterState | None:
        try:
            data = json.loads((directory / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        return cls(
            directory=directory,
            owner_pid=data.get("owner_pid"),
            owner_start_ticks=data.get("owner_start_ticks"),
            api_port=int(data.get("api_port", 0)),
            api_host=str(data.get("api_host", "127.0.0.1")),
            etcd_port=int(data.get("etcd_port", 0)),
            nodes=list(data.get("nodes", [])),
            processes=[ProcessRecord.from_json(p) for p in data.get("processes", [])],
        )

    @property
    def marker(self) -> str:
        """A string every component's command line contains: the instance directory."""
        return str(self.directory)

    def owner_alive(self) -> bool:
        if self.owner_pid is None:
            return True
        return processes.start_ticks(self.owner_pid) == self.owner_start_ticks

    def running(self) -> list[ProcessRecord]:
        return [p for p in self.processes if processes.is_ours(p, self.marker)]


def reap_stale(root: Path | None = None) -> list[Path]:
    """Stop and remove instances whose owner died; leave everything else alone."""
    root = root or runs_root()
    reaped: list[Path] = []
    if not root.is_dir():
        return reaped
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        state = ClusterState.load(directory)
        if state is None or state.owner_alive():
            continue
        leftovers = state.running()
        if leftovers:
            _say(f"reaping stale instance {directory.name}: {', '.join(p.name for p in leftovers)}")
        processes.stop(state.processes, state.marker)
        _remove_tree(directory)
        reaped.append(directory)
    return reaped


def _remove_tree(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    _remove_etcd_tmpfs(directory)


def _remove_etcd_tmpfs(directory: Path) -> None:
    etcd_tmpfs = _etcd_data_dir(directory)
    if etcd_tmpfs.parent == Path("/dev/shm"):
        shutil.rmtree(etcd_tmpfs, ignore_errors=True)


def _etcd_data_dir(directory: Path) -> Path:
    # Debian's etcd 3.4 has no --unsafe-no-fsync, so in tests its data lives on
    # tmpfs where fsync is free. Named after the instance path so two never clash.
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm / ("mailshard-etcd-" + str(directory).strip("/").replace("/", "_"))
    return directory / "etcd"


class ControlPlane:
    """Start, use and stop one instance. Usable from the CLI and from a pytest fixture."""

    def __init__(self, state: ClusterState, children: list[subprocess.Popen[bytes]] | None = None) -> None:
        self.state = state
        self._children = children or []

    @property
    def kubeconfig(self) -> Path:
        return self.state.kubeconfig

    @property
    def directory(self) -> Path:
        return self.state.directory

    @classmethod
    def attach(cls, directory: Path) -> ControlPlane:
        state = ClusterState.load(directory)
        if state is None:
            raise HarnessError(f"no control plane instance in {directory} (start one with `make cluster-up`)")
        return cls(state)

    # ------------------------------------------------------------------ start

    @classmethod
    def start(cls, config: ClusterConfig) -> ControlPlane:
        """Build what is missing, then start every component and wait until all nodes are Ready."""
        reap_stale()
        directory = config.instance_dir.resolve()
        existing = ClusterState.load(directory)
        if existing is not None and existing.running():
            if existing.owner_alive():
                raise HarnessError(
                    f"an instance is already running in {directory}; stop it first (`make cluster-down`)"
                )
            processes.stop(existing.processes, existing.marker)
        if directory.exists():
            _say(f"removing stale data dir {directory}")
            _remove_tree(directory)
        directory.mkdir(parents=True)

        binaries = build.ensure_binaries()
        etcd = build.ensure_etcd()

        owner_ticks = processes.start_ticks(config.owner_pid) if config.owner_pid else None
        state = ClusterState(directory=directory, owner_pid=config.owner_pid, owner_start_ticks=owner_ticks)
        plane = cls(state)
        try:
            plane._start_components(config, binaries, etcd)
        except BaseException:
            plane.stop(remove=False)
            raise
        return plane

    def _spawn(self, name: str, argv: list[str], die_with_parent: bool) -> subprocess.Popen[bytes]:
        log = self.directory / "logs" / f"{name}.log"
        child, record = processes.spawn(name, argv, log=log, die_with_parent=die_with_parent)
        self._children.append(child)
        self.state.processes.append(record)
        self.state.save()
        return child

    def _start_components(self, config: ClusterConfig, binaries: dict[str, Path], etcd: Path) -> None:
        started = time.monotonic()
        owned = config.owner_pid is not None
        pki = create_pki(
            self.directory / "pki",
            server_ips=tuple(dict.fromkeys(("127.0.0.1", config.bind_address))),
            extra_identities=config.client_identities,
        )
        state = self.state
        state.etcd_port, etcd_peer = _free_port(), _free_port()
        state.api_host = config.bind_address
        state.api_port = config.api_port or _free_port(config.bind_address)
        state.save()

        etcd_dir = _etcd_data_dir(self.directory)
        shutil.rmtree(etcd_dir, ignore_errors=True)
        child = self._spawn(
            "etcd",
            [
                str(etcd),
                "--name=harness",
                f"--data-dir={etcd_dir}",
                f"--listen-client-urls=http://127.0.0.1:{state.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{state.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=harness=http://127.0.0.1:{etcd_peer}",
                "--logger=zap",
                "--log-outputs=stderr",
                f"--quota-backend-bytes={4 * 1024**3}",
                # Marks the process as this instance's for stale-process reaping.
                f"--initial-cluster-token={self.directory}",
            ],
            owned,
        )
        self._wait("etcd", child, lambda: _http_ok(f"http://127.0.0.1:{state.etcd_port}/health"))

        child = self._spawn(
            "kube-apiserver", self._apiserver_argv(binaries["kube-apiserver"], pki, config.bind_address), owned
        )
        self._write_kubeconfigs(pki)
        self._wait("kube-apiserver", child, lambda: self._api_ok("/readyz"))
        _say(f"kube-apiserver ready at {state.api_url} after {time.monotonic() - started:.1f} s")
        if config.after_apiserver is not None:
            config.after_apiserver(self)

        child = self._spawn(
            "kube-controller-manager", self._controller_manager_argv(binaries["kube-controller-manager"], pki), owned
        )
        self._wait("kube-controller-manager", child, lambda: _https_ok(self._component_health("kcm")))
        child = self._spawn("kube-scheduler", self._scheduler_argv(binaries["kube-scheduler"]), owned)
        self._wait("kube-scheduler", child, lambda: _https_ok(self._component_health("scheduler")))

        # With no KWOK nodes (the real-node tier brings its own kubelet) KWOK has nothing to do.
        kwok = self._spawn("kwok", self._kwok_argv(binaries["kwok"]), owned) if config.nodes else None
        provisioner = self._spawn(
            "local-provisioner",
            [
                sys.executable,
                "-m",
                "mailshard_harness",
                "provisioner",
                f"--kubeconfig={self.kubeconfig}",
                *([f"--volumes-dir={config.volumes_dir}"] if config.volumes_dir else []),
            ],
            owned,
        )
        self._apply([storage_class_manifest(), *self._node_manifests(config)])
        self.state.nodes = [f"kwok-node-{i}" for i in range(config.nodes)]
        self.state.save()
        if kwok is None:
            _say(f"control plane ready after {time.monotonic() - started:.1f} s (no KWOK nodes)")
            return
        self._wait("kwok", kwok, self._all_nodes_ready, also=[("local-provisioner", provisioner)])
        _say(
            f"{config.nodes} nodes Ready after {time.monotonic() - started:.1f} s; export KUBECONFIG={self.kubeconfig}"
        )

    def _apiserver_argv(self, binary: Path, pki: ClusterPKI, bind_address: str = "127.0.0.1") -> list[str]:
        state = self.state
        if ipaddress.ip_address(bind_address).is_loopback:
            # Loopback is not a valid endpoint address, so the apiserver must
            # not try to publish itself in the `kubernetes` Service.
            endpoints = ["--endpoint-reconciler-type=none"]
        else:
            # Pods on a real node reach it through the `kubernetes` Service, and it reaches
            # that node's kubelet (logs, exec) at the node's InternalIP.
            endpoints = ["--kubelet-preferred-address-types=InternalIP"]
        return [
            str(binary),
            f"--etcd-servers=http://127.0.0.1:{state.etcd_port}",
            f"--etcd-prefix=/registry-{self.directory.name}",
            f"--bind-address={bind_address}",
            f"--advertise-address={bind_address}",
            f"--secure-port={state.api_port}",
            f"--cert-dir={self.directory / 'pki'}",
            f"--tls-cert-file={pki.apiserver_cert}",
            f"--tls-private-key-file={pki.apiserver_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--kubelet-client-certificate={pki.client_cert('apiserver-kubelet-client')}",
            f"--kubelet-client-key={pki.client_key('apiserver-kubelet-client')}",
            f"--service-account-key-file={pki.service_account_pub}",
            f"--service-account-signing-key-file={pki.service_account_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            *endpoints,
            "--profiling=false",
            "--max-requests-inflight=800",
            "--max-mutating-requests-inflight=400",
            # Every write is audited, so tests can prove "no writes" claims by
            # counting a client's writes rather than trusting its own logs.
            f"--audit-policy-file={self._audit_policy()}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-maxsize=1024",
        ]

    @property
    def audit_log(self) -> Path:
        return self.directory / "logs" / "audit.log"

    def _audit_policy(self) -> Path:
        path = self.directory / "audit-policy.yaml"
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived"],
            "rules": [
                {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
                {"level": "None"},
            ],
        }
        path.write_text(yaml.safe_dump(policy))
        return path

    def audited_writes(self, username: str) -> list[dict[str, Any]]:
        """Completed write requests by `username`, from the apiserver's audit log."""
        events = []
        with self.audit_log.open() as log:
            for line in log:
                event = json.loads(line)
                if event.get("stage") == "ResponseComplete" and event.get("user", {}).get("username") == username:
                    events.append(event)
        return events

    def _component_health(self, which: str) -> str:
        return f"https://127.0.0.1:{self._ports()[which]}/healthz"

    def _ports(self) -> dict[str, int]:
        path = self.directory / "ports.json"
        if path.exists():
            return dict(json.loads(path.read_text()))
        ports = {"kcm": _free_port(), "scheduler": _free_port(), "kwok": _free_port()}
        path.write_text(json.dumps(ports))
        return ports

    def _controller_manager_argv(self, binary: Path, pki: ClusterPKI) -> list[str]:
        kubeconfig = self.directory / "controller-manager.kubeconfig"
        return [
            str(binary),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self._ports()['kcm']}",
            f"--cert-dir={self.directory / 'pki' / 'kcm'}",
            f"--service-account-private-key-file={pki.service_account_key}",
            f"--root-ca-file={pki.ca_cert}",
            f"--cluster-signing-cert-file={pki.ca_cert}",
            f"--cluster-signing-key-file={pki.ca_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--concurrent-statefulset-syncs=20",
        ]

    def _scheduler_argv(self, binary: Path) -> list[str]:
        kubeconfig = self.directory / "scheduler.kubeconfig"
        config = self.directory / "scheduler-config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": str(kubeconfig), "qps": 200, "burst": 400},
                    "leaderElection": {"leaderElect": False},
                }
            )
        )
        return [
            str(binary),
            f"--config={config}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self._ports()['scheduler']}",
            f"--cert-dir={self.directory / 'pki' / 'scheduler'}",
        ]

    def _kwok_argv(self, binary: Path) -> list[str]:
        config = self.directory / "kwok.yaml"
        # An explicit (empty) configuration keeps a user's ~/.kwok/kwok.yaml out
        # of our runs; with no Stage objects KWOK applies its default stages.
        config.write_text("apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions: {}\n")
        return [
            str(binary),
            f"--config={config}",
            f"--kubeconfig={self.kubeconfig}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
            f"--cidr={pod_cidr(self.directory.name)}",
            f"--node-ip={KWOK_NODE_IP}",
            # Explicit, because an options file without it leaves leases off: nodes would then
            # heartbeat only every ~10 minutes and the node controller would mark them NotReady.
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{self._ports()['kwok']}",
        ]

    def _node_manifests(self, config: ClusterConfig) -> list[dict[str, Any]]:
        capacity = {"cpu": "32", "memory": "256Gi", "pods": str(config.pods_per_node), "ephemeral-storage": "1Ti"}
        zones = ("zone-a", "zone-b", "zone-c")
        return [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": f"kwok-node-{i}",
                    "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {
                        "kubernetes.io/hostname": f"kwok-node-{i}",
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "topology.kubernetes.io/zone": zones[i % len(zones)],
                        "type": "kwok",
                    },
                },
                "spec": {},
                "status": {"allocatable": capacity, "capacity": capacity},
            }
            for i in range(config.nodes)
        ]

    def write_kubeconfig(self, stem: str, path: Path) -> Path:
        """A kubeconfig for the client certificate `stem` (one of the PKI's identities), mode 0600."""
        pki = ClusterPKI(self.directory / "pki")
        path.write_text(yaml.safe_dump(_kubeconfig(self.state.api_url, pki, stem, self.directory.name)))
        path.chmod(0o600)
        return path

    def _write_kubeconfigs(self, pki: ClusterPKI) -> None:
        for stem, path in (
            ("admin", self.kubeconfig),
            ("controller-manager", self.directory / "controller-manager.kubeconfig"),
            ("scheduler", self.directory / "scheduler.kubeconfig"),
        ):
            path.write_text(yaml.safe_dump(_kubeconfig(self.state.api_url, pki, stem, self.directory.name)))
            path.chmod(0o600)

    # ------------------------------------------------------------- waiting

    def _wait(
        self,
        name: str,
        child: subprocess.Popen[bytes],
        ready: Callable[[], bool],
        *,
        also: list[tuple[str, subprocess.Popen[bytes]]] | None = None,
        timeout: float = _START_TIMEOUT,
    ) -> None:
        deadline = time.monotonic() + timeout
        watched = [(name, child), *(also or [])]
        while True:
            for watched_name, process in watched:
                code = process.poll()
                if code is not None:
                    raise _start_failure(watched_name, code, self.directory / "logs" / f"{watched_name}.log")
            try:
                if ready():
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                log = self.directory / "logs" / f"{name}.log"
                raise HarnessError(f"{name} did not become ready within {timeout:.0f} s", log)
            time.sleep(0.1)

    def _ssl_context(self) -> ssl.SSLContext:
        pki = ClusterPKI(self.directory / "pki")
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.client_cert("admin")), str(pki.client_key("admin")))
        return context

    def _api_ok(self, path: str) -> bool:
        return _http_ok(self.state.api_url + path, context=self._ssl_context())

    def api_get(self, path: str) -> dict[str, Any]:
        """A raw GET against the apiserver as the harness admin (for readiness checks and tests)."""
        with urllib.request.urlopen(self.state.api_url + path, context=self._ssl_context(), timeout=10) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def _all_nodes_ready(self) -> bool:
        nodes = self.api_get("/api/v1/nodes").get("items", [])
        ready = {
            n["metadata"]["name"]
            for n in nodes
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
        }
        return set(self.state.nodes) <= ready

    def _apply(self, manifests: list[dict[str, Any]]) -> None:
        kubectl_apply(
            self.kubeconfig,
            manifests,
            cache_dir=self.directory / "kube-cache",
            what="the harness' nodes and StorageClass",
        )

    # ------------------------------------------------------------------ stop

    def stop(self, *, remove: bool = True) -> None:
        """Stop every component (proved ours by PID, start time and command line); remove the data dir."""
        processes.stop(list(reversed(self.state.processes)), self.state.marker, children=self._children)
        if remove:
            _remove_tree(self.directory)
        else:
            # Keep the logs for reading, but never leave etcd's data in memory.
            _remove_etcd_tmpfs(self.directory)


def _start_failure(name: str, code: int, log: Path) -> HarnessError:
    tail = log_tail(log, 40)
    if "address already in use" in tail:
        return HarnessError(f"{name} could not bind its port: address already in use", log)
    if name == "etcd" and any(word in tail for word in ("data dir", "data-dir", "member", "wal", "snap")):
        return HarnessError(f"etcd would not start: its data dir is stale or corrupt (exit {code})", log)
    return HarnessError(f"{name} exited with code {code} while starting", log)


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _https_ok(url: str) -> bool:
    # The controller-manager and scheduler serve self-signed certificates.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return _http_ok(url, context)


def _kubeconfig(server: str, pki: ClusterPKI, stem: str, name: str) -> dict[str, Any]:
    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    context = f"mailshard-{name}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": server, "certificate-authority-data": b64(pki.ca_cert)}}],
        "users": [
            {
                "name": f"{context}-{stem}",
                "user": {
                    "client-certificate-data": b64(pki.client_cert(stem)),
                    "client-key-data": b64(pki.client_key(stem)),
                },
            }
        ],
        "contexts": [{"name": context, "context": {"cluster": context, "user": f"{context}-{stem}"}}],
        "current-context": context,
    }


__all__ = [
    "STORAGE_CLASS_NAME",
    "ClusterConfig",
    "ClusterState",
    "ControlPlane",
    "reap_stale",
    "runs_root",
]
