"""Host-wide state the real node touches, recorded before and put back after.

A kubelet is not a test process: it writes kernel sysctls (`vm.overcommit_memory`,
`kernel.panic`, `kernel.panic_on_oops`, …), creates cgroups, mounts volumes and
container root filesystems, and with containerd leaves shims that outlive it. A
crashed or interrupted run must not leave any of that behind, and the next start
must be able to find and remove it without touching anything else on the machine.

So every piece is named so it can be proved ours: processes by a marker in their
command line (our run directory, which also names our containerd socket), mounts
by living under our directories, cgroups by one root name. Sysctls are recorded
in a baseline file before the first change and restored from it.
`HostSnapshot` captures all of it, so a test can assert that a stop left the host
as it found it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

CGROUP_NAME = "mailshard-node"
"""The kubelet's `cgroupRoot`: every pod cgroup lives under /<this> in each v1 hierarchy."""

SYSCTLS = (
    # kubelet's setupKernelTunables (pkg/kubelet/cm/container_manager_linux.go).
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    # The CNI bridge plugin (isGateway) and kube-proxy (conntrack, route_localnet) may write these.
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
    "net.netfilter.nf_conntrack_tcp_be_liberal",
    "net.netfilter.nf_conntrack_udp_timeout",
    "net.netfilter.nf_conntrack_udp_timeout_stream",
)
CONTAINER_LOGS_DIR = Path("/var/log/containers")
"""kubelet links every container's log here (a constant in kubelet, not configurable)."""
CNI_CACHE_DIR = Path("/var/lib/cni")
"""libcni's result cache (containerd 1.6 does not let us move it): `results/<network>-<id>-<if>`."""
CONTAINERD_SHIM_DIR = Path("/run/containerd")
"""containerd 1.6 puts shim sockets under /run/containerd/s whatever its state dir is."""
KUBELET_DEVICE_PLUGINS = Path("/var/lib/kubelet/device-plugins")
"""kubelet's device manager serves kubelet.sock here whatever its --root-dir (a constant of the plugin API)."""
HOST_PATHS = (CONTAINER_LOGS_DIR, CNI_CACHE_DIR, CONTAINERD_SHIM_DIR, KUBELET_DEVICE_PLUGINS.parent)
"""Host directories the node may create outside its own: removed at stop if they were not there before."""


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctls(names: Iterable[str] = SYSCTLS) -> dict[str, str]:
    """Current values of those that exist on this kernel."""
    values = {}
    for name in names:
        with contextlib.suppress(OSError):
            values[name] = _sysctl_path(name).read_text().strip()
    return values


def restore_sysctls(baseline: dict[str, str]) -> list[str]:
    """Write back every recorded value that changed; returns what was restored."""
    restored = []
    for name, value in read_sysctls(baseline).items():
        if value != baseline[name]:
            _sysctl_path(name).write_text(baseline[name])
            restored.append(f"{name}={baseline[name]} (was {value})")
    return restored


# ---------------------------------------------------------------- processes


def _ancestors() -> set[int]:
    pids = set()
    pid = os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat[stat.rindex(")") + 2 :].split()[1])
    return pids


def processes_with_marker(marker: str) -> list[int]:
    """PIDs whose command line names `marker` (our run dir), never this process or its ancestors."""
    spared = _ancestors()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in spared:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def kill_processes(pids: Iterable[int], *, timeout: float = 5.0) -> None:
    """SIGKILL each and wait until they are gone (or are zombies of someone else)."""
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# ------------------------------------------------------------------ cgroups


def cgroup_hierarchies() -> list[Path]:
    """Mount points of every cgroup hierarchy (v1 controllers, named ones, and v2 if mounted)."""
    roots = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype in ("cgroup", "cgroup2"):
            roots.append(Path(_unescape(fields[4])))
    return sorted(set(roots))


def create_cgroup_root() -> list[Path]:
    """/<CGROUP_NAME> in every hierarchy: kubelet refuses a cgroupRoot that does not exist."""
    created = []
    for root in cgroup_hierarchies():
        path = root / CGROUP_NAME
        if not path.exists():
            path.mkdir()
            created.append(path)
        # A new cpuset is empty, and nothing can join an empty cpuset: inherit the parent's.
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (root / knob).exists() and not (path / knob).read_text().strip():
                (path / knob).write_text((root / knob).read_text().strip())
    return created


def cgroup_dirs() -> list[Path]:
    return [root / CGROUP_NAME for root in cgroup_hierarchies() if (root / CGROUP_NAME).exists()]


def remove_cgroup_root(*, timeout: float = 10.0) -> None:
    """Kill every process under our cgroup root (pod containers), then remove the cgroups, deepest first."""
    deadline = time.monotonic() + timeout
    for top in cgroup_dirs():
        while True:
            directories = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            pids: set[int] = set()
            for directory in [*directories, top]:
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
            if pids:
                kill_processes(pids, timeout=2.0)
            for directory in [*directories, top]:
                with contextlib.suppress(OSError):
                    directory.rmdir()
            if not top.exists() or time.monotonic() > deadline:
                break
            time.sleep(0.1)


# ------------------------------------------------------------------- mounts


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def mounts_under(directories: Iterable[Path]) -> list[Path]:
    """Mount points at or below any of `directories`, deepest first."""
    roots = [str(d) for d in directories]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _unescape(line.split()[4])
        if any(point == root or point.startswith(root + "/") for root in roots):
            found.append(Path(point))
    return sorted(set(found), key=lambda p: (len(p.parts), str(p)), reverse=True)


def unmount_under(directories: Iterable[Path]) -> list[Path]:
    """Unmount everything below `directories` (lazily if a mount is busy); returns what is still mounted."""
    directories = list(directories)
    for _ in range(3):
        points = mounts_under(directories)
        if not points:
            return []
        for point in points:
            if subprocess.run(["umount", str(point)], capture_output=True, check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
    return mounts_under(directories)


# ------------------------------------------------------- kubelet/CNI leftovers


def remove_container_log_links(pod_logs_dir: Path) -> None:
    """kubelet's /var/log/containers links into our pod log dir (dangling once that is gone)."""
    if not CONTAINER_LOGS_DIR.is_dir():
        return
    for link in CONTAINER_LOGS_DIR.iterdir():
        if link.is_symlink() and os.readlink(link).startswith(str(pod_logs_dir) + "/"):
            link.unlink()


def remove_cni_cache(network: str, run_dir: Path) -> None:
    """libcni's cached results of our pods: our network's, and containerd's `cni-loopback` ones whose
    network namespace lives under our run directory (podman's entries are left alone)."""
    results = CNI_CACHE_DIR / "results"
    if not results.is_dir():
        return
    for entry in results.iterdir():
        try:
            cached = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue
        sandboxes = [str(i.get("sandbox", "")) for i in (cached.get("result") or {}).get("interfaces") or []]
        if cached.get("networkName") == network or any(s.startswith(str(run_dir) + "/") for s in sandboxes):
            entry.unlink(missing_ok=True)


def remove_dead_sockets(directory: Path) -> None:
    """Unix sockets nobody serves any more: containerd's shim sockets (/run/containerd/s, whatever its state
    dir) and kubelet's device-plugin socket are left behind by a killed process."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if not entry.is_socket():
            continue
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(entry))
            except ConnectionRefusedError:
                entry.unlink(missing_ok=True)
            except OSError:
                pass


def remove_if_created(path: Path, existed_before: bool) -> None:
    """Remove a directory we created (only if it is empty now: something else may use it since)."""
    if existed_before or not path.is_dir():
        return
    for directory in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            directory.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()


# ----------------------------------------------------------------- snapshot


@dataclass
class HostSnapshot:
    """Everything host-wide the node can change, in comparable form."""

    processes: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    chains: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    cgroups: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @classmethod
    def take(cls, *, marker: str, directories: Iterable[Path], bridge: str, chains: list[str]) -> HostSnapshot:
        links = []
        with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
            for link in json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, check=True).stdout):
                if link["ifname"] == bridge or link.get("master") == bridge:
                    links.append(link["ifname"])
        files = []
        for parent in (CONTAINER_LOGS_DIR, CNI_CACHE_DIR / "results", CNI_CACHE_DIR / "networks"):
            if parent.is_dir():
                files += [str(p) for p in parent.iterdir()]
        # containerd's CRI names pod network namespaces cni-<uuid> (ours live under its state dir).
        files += [str(p) for p in Path("/run/netns").glob("cni-*")]
        for path in HOST_PATHS:
            if path.exists():
                files.append(str(path))
        for parent in (CONTAINERD_SHIM_DIR / "s", KUBELET_DEVICE_PLUGINS):
            if parent.is_dir():
                files += [str(p) for p in parent.iterdir()]
        return cls(
            processes=[
                f"{pid} {Path(f'/proc/{pid}/comm').read_text().strip()}"
                for pid in processes_with_marker(marker)
                if _alive(pid)
            ],
            mounts=[str(p) for p in mounts_under(directories)],
            chains=sorted(chains),
            links=sorted(links),
            sysctls=read_sysctls(),
            cgroups=[str(p) for p in cgroup_dirs()],
            files=sorted(files),
        )

    def differences(self, after: HostSnapshot) -> list[str]:
        """What `after` has that this snapshot had not (or lost), one line each; empty when equal."""
        lines = []
        mine, theirs = asdict(self), asdict(after)
        for key in mine:
            if key == "sysctls":
                for name in sorted(set(mine[key]) | set(theirs[key])):
                    if mine[key].get(name) != theirs[key].get(name):
                        lines.append(f"sysctl {name}: {mine[key].get(name)} -> {theirs[key].get(name)}")
                continue
            for item in sorted(set(theirs[key]) - set(mine[key])):
                lines.append(f"{key}: left behind {item}")
            for item in sorted(set(mine[key]) - set(theirs[key])):
                lines.append(f"{key}: removed {item} (it was there before)")
        return lines
