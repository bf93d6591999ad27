"""Real agents, with real Dovecot, standing in for the containers of KWOK pods.

Why this module exists: KWOK simulates pods, not what runs in them, yet the
failover monitor talks to each pod's agent at `<pod IP>:8080`. The harness's
KWOK gives pods loopback IPs (`cluster.pod_cidr`), so a test can start the
very agent the image runs (`python -m mailshard.agent`) bound to a pod's IP,
configured from the shard's own ConfigMap and Secret as the operator wrote
them: the same `shard.json`, the same member config derivation
(`backends.contract.member_config`), the same agent token and replication
password. Only the addresses differ from a pod: the member listens on its pod
IP, and its peer is the other pod's IP instead of a cluster DNS name.

Killing a member (`kill`) SIGKILLs the agent and the mail daemon together, as
a node or container death would; nothing is told beforehand.

A member started again (`restart_from_contract`) first reads the shard's
ConfigMap as it is then, as a container starting in a pod would find it
mounted, so what the operator recorded there since (`superseded`) reaches it.
When its pod was recreated, KWOK may have given it another IP: it then
listens at the new one, where the operator finds it, and a `Forwarder` from
the old one stands in for the stable DNS name its peer knows it by in a
cluster (the peer, running all along, was configured with the old address).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from mailshard.api.constants import AGENT_TOKEN_KEY, REPLICATION_PASSWORD_KEY, SHARD_CONFIG_KEY
from mailshard.api.runtime import ShardRuntimeConfig
from mailshard.backends.contract import member_config
from mailshard.builders.names import config_map_name, pod_name, replication_secret_name

REPO = Path(__file__).resolve().parents[2]
LOCAL_MAIL_PORTS = {"imap": 10143, "pop3": 10110, "lmtp": 10024, "managesieve": 14190}
"""Client-facing ports of a local member (the operator never uses them; replication and agent ports are kept)."""


@dataclass
class LocalMember:
    """One member's agent process, bound to its KWOK pod's IP."""

    name: str
    root: Path
    ip: str
    proc: subprocess.Popen[bytes] | None = None
    forwarder: Forwarder | None = None
    """Relays the address the peer knows this member by to its current pod IP, once its pod came back elsewhere."""

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "agent.log"

    def daemon_pid(self) -> int | None:
        try:
            return int((self.data_dir / "run" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.name} is already running")
        argv = [
            sys.executable,
            "-m",
            "mailshard.agent",
            "--config",
            str(self.root / "runtime.json"),
            "--role-file",
            str(self.data_dir / "role"),
            "--data-dir",
            str(self.data_dir),
            "--listen",
            f"{self.ip}:8080",
            "--token-file",
            str(self.root / "token"),
            "--poll-interval",
            "0.5",
        ]
        env = dict(os.environ, PYTHONPATH=str(REPO / "operator"), PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )

    def kill(self) -> None:
        """SIGKILL the agent and its mail daemon at once: a crash, with no chance to clean up."""
        self.send_kill()
        self.reap()

    def send_kill(self) -> None:
        """SIGKILL the agent's and the daemon's process groups, without waiting for them to go."""
        daemon = self.daemon_pid()
        for group in (self.proc.pid if self.proc is not None else None, daemon):
            if group is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, signal.SIGKILL)

    def reap(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(25)
        self.kill()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def agent_status(self, *, timeout: float = 2.0) -> dict[str, Any] | None:
        """The agent's own `GET /status`, as the operator reads it; None while it does not answer."""
        token = (self.root / "token").read_text().strip()
        request = urllib.request.Request(f"http://{self.ip}:8080/status", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                document: dict[str, Any] = json.loads(response.read())
                return document
        except (OSError, ValueError):
            return None


@dataclass
class LocalPair:
    shard: str
    members: dict[str, LocalMember] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)
    known_as: dict[str, str] = field(default_factory=dict)
    """The address each member's peer was configured with: its pod IP when the pair was started."""

    def stop(self) -> None:
        for member in self.members.values():
            member.stop()
            if member.forwarder is not None:
                member.forwarder.stop()


class Forwarder:
    """Accepts on an old address and relays each connection, both ways, to the same port at a new address.

    For the harness only: in a cluster the peer is a DNS name that follows a
    recreated pod to its new IP; here the running peer was configured with the
    old IP, so this keeps that address leading to the member.
    """

    def __init__(self, old_ip: str, new_ip: str, ports: Iterable[int]) -> None:
        self.old_ip, self.new_ip = old_ip, new_ip
        self._listeners = [socket.create_server((old_ip, port)) for port in ports]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        for listener in self._listeners:
            threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        port = listener.getsockname()[1]
        while not self._stopping.is_set():
            try:
                client_side, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((self.new_ip, port), timeout=5)
            except OSError:
                client_side.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client_side, upstream))
            for source, target in ((client_side, upstream), (upstream, client_side)):
                threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_WR)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            sockets = [*self._listeners, *self._open]
            self._open.clear()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept(), which close() alone does not
            with contextlib.suppress(OSError):
                sock.close()


def restart_from_contract(
    api: client.ApiClient, namespace: str, pair: LocalPair, name: str, *, peer_host: str | None = None
) -> None:
    """Start a stopped member as its pod would start now: the shard's ConfigMap as it is, at its pod's IP.

    `peer_host` replaces the address it knows its peer by (an address where
    nothing answers makes the peer unreachable from it, a partition). If the
    pod came back at a new IP, the peer keeps reaching it at the old one through
    a `Forwarder`, as a cluster's DNS name would lead it there.
    """
    core = client.CoreV1Api(api)
    member = pair.members[name]
    if member.proc is not None and member.proc.poll() is None:
        raise RuntimeError(f"{name} is still running; stop or kill it first")
    config_map = core.read_namespaced_config_map(config_map_name(pair.shard), namespace)
    runtime = ShardRuntimeConfig.from_json((config_map.data or {})[SHARD_CONFIG_KEY].encode())
    first, second = pair.members
    ips = pod_ips(core, namespace, (first, second))
    if ips is None:
        raise RuntimeError(f"the pods of {pair.shard} have no IPs yet")
    old_ip = pair.known_as[name]
    if member.forwarder is not None:
        member.forwarder.stop()
        member.forwarder = None
    if ips[name] != old_ip:
        member.forwarder = Forwarder(old_ip, ips[name], (runtime.ports.agent, runtime.ports.replication))
    peers = {**ips, **{other: pair.known_as[other] for other in pair.members if other != name}}
    if peer_host is not None:
        peers.update({other: peer_host for other in pair.members if other != name})
    write_member_config(pair, runtime, name, {**peers, name: ips[name]})
    member.start()


def _secret(core: client.CoreV1Api, namespace: str, shard: str) -> dict[str, str]:
    secret = core.read_namespaced_secret(replication_secret_name(shard), namespace)
    return {key: base64.b64decode(value).decode() for key, value in (secret.data or {}).items()}


def pod_ips(core: client.CoreV1Api, namespace: str, members: tuple[str, str]) -> dict[str, str] | None:
    """Each member's pod IP, or None while a pod is missing or has none yet."""
    found = {}
    for member in members:
        try:
            pod = core.read_namespaced_pod(pod_name(member), namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        if not pod.status or not pod.status.pod_ip or pod.metadata.deletion_timestamp:
            return None
        found[member] = pod.status.pod_ip
    return found


def prepare_pair(
    api: client.ApiClient,
    namespace: str,
    shard: str,
    root: Path,
    *,
    master: str,
    users: dict[str, str],
) -> LocalPair:
    """Write both members' files from the shard's ConfigMap and Secret; start nothing yet."""
    core = client.CoreV1Api(api)
    config_map = core.read_namespaced_config_map(config_map_name(shard), namespace)
    runtime = ShardRuntimeConfig.from_json((config_map.data or {})[SHARD_CONFIG_KEY].encode())
    secret = _secret(core, namespace, shard)
    names = (runtime.members[0].name, runtime.members[1].name)
    ips = pod_ips(core, namespace, names)
    if ips is None:
        raise RuntimeError(f"the pods of {shard} have no IPs yet")
    pair = LocalPair(shard, users=dict(users), known_as=dict(ips))
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    users_file = root / "users"
    users_file.write_text("".join(f"{user}:{{PLAIN}}{password}::::::\n" for user, password in users.items()))
    users_file.chmod(0o644)
    for name in names:
        member_root = root / name
        member_root.mkdir(exist_ok=True)
        member_root.chmod(0o755)
        (member_root / "data").mkdir(exist_ok=True)
        (member_root / "data").chmod(0o755)
        (member_root / "token").write_text(secret[AGENT_TOKEN_KEY] + "\n")
        (member_root / "doveadm-password").write_text(secret[REPLICATION_PASSWORD_KEY] + "\n")
        member = LocalMember(name, member_root, ips[name])
        pair.members[name] = member
        (member.data_dir / "role").write_text("master\n" if name == master else "replica\n")
    for name in pair.members:
        write_member_config(pair, runtime, name, ips)
    return pair


def write_member_config(pair: LocalPair, runtime: ShardRuntimeConfig, name: str, ips: dict[str, str]) -> None:
    """The member's runtime config as its pod derives it, with pod IPs for its own and its peer's address."""
    member = pair.members[name]
    config = member_config(runtime, name, users_file=member.root.parent / "users")
    peer = config.peer
    assert peer is not None
    document: dict[str, Any] = json.loads(config.model_dump_json(by_alias=True))
    document["listenAddress"] = ips[name]
    # The daemon runs unprivileged here, as in the image; each pod IP is its own, so fixed high ports never clash.
    document["ports"].update(LOCAL_MAIL_PORTS)
    document["peer"]["host"] = ips[peer.name]
    document["mailDir"] = str(member.data_dir / "mail")
    document["doveadmPasswordFile"] = str(member.root / "doveadm-password")
    (member.root / "runtime.json").write_text(json.dumps(document, indent=2))
    member.ip = ips[name]


def wait_for_ips(
    api: client.ApiClient, namespace: str, members: tuple[str, str], *, timeout: float = 60
) -> dict[str, str]:
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = pod_ips(core, namespace, members)
        if found is not None:
            return found
        time.sleep(0.2)
    raise TimeoutError(f"pods of {members} got no IPs within {timeout:.0f}s")


def remove(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)


def kill_together(*members: LocalMember) -> None:
    """Crash several members in the same instant: every SIGKILL is sent before any is waited for (waiting for
    the first to exit could take seconds on a loaded machine, long enough to look like two separate failures)."""
    for member in members:
        member.send_kill()
    for member in members:
        member.reap()
