"""The real node's container runtime: our own containerd, and the images it runs, offline.

containerd 1.6 from Debian, with runc and cgroupfs (cgroup v1), its own root,
state and socket under the node directory, so it never shares anything with a
system containerd. This machine's root lacks CAP_SYS_RESOURCE, so the CRI plugin
must not try to lower containers' OOM scores (`restrict_oom_score_adj`).

There is no registry to pull from. The sandbox ("pause") image is a static C
binary compiled here into a FROM-scratch image; CoreDNS is its Go binary (built
by `build.py`) in another; our own images come from `make images`. podman builds
or holds all of them, and `podman save | ctr images import` moves them into
containerd. That costs about 40 s per image on this machine's disk, so
containerd's root (content, snapshots, image metadata) persists across runs in
`<cache>/node/containerd/root`, and an image is imported again only when
podman's image ID changed. Everything else containerd keeps (containers, tasks,
pod network namespaces) lives in the per-run state directory, and containers are
deleted from the persistent metadata at every stop; after a crash, the next start
deletes them with a containerd that has no CRI plugin loaded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mailshard_harness import build, versions
from mailshard_harness.errors import HarnessError, log_tail
from mailshard_harness.images import PODMAN_FLAGS, image_name

NAMESPACE = "k8s.io"
"""containerd namespace of everything the CRI plugin (so the kubelet) sees."""
PAUSE_SOURCE = Path(__file__).parent / "pause" / "pause.c"
HARNESS_REPOSITORY = "localhost/mailshard-harness"
APP_IMAGES = ("operator", "dovecot", "cyrus")
DIRTY_MARKER = "containers-may-remain"


def pause_image() -> str:
    """Tagged with the source's hash, so a changed pause.c is rebuilt and re-imported."""
    digest = hashlib.sha256(PAUSE_SOURCE.read_bytes()).hexdigest()[:12]
    return f"{HARNESS_REPOSITORY}/pause:{digest}"


def coredns_image() -> str:
    return f"{HARNESS_REPOSITORY}/coredns:{versions.COREDNS_VERSION}"


def app_image_refs(name: str) -> tuple[str, str]:
    """podman's name of one of our images, and the name pods use (`mailshard/<name>:<version>`, as on kind)."""
    short = image_name(name)
    return f"localhost/{short}", f"docker.io/{short}"


@dataclass(frozen=True)
class RuntimePaths:
    """Where containerd keeps what: `root` persists across runs, everything else is per run."""

    root: Path
    run: Path

    @property
    def state(self) -> Path:
        return self.run / "containerd" / "state"

    @property
    def config(self) -> Path:
        return self.run / "containerd" / "config.toml"

    @property
    def socket(self) -> Path:
        return self.state / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.run / "cni" / "net.d"

    @property
    def imported(self) -> Path:
        return self.root.parent / "imported.json"


def containerd_config(paths: RuntimePaths, *, cri: bool = True) -> str:
    """config.toml (version 2). With `cri=False`, a maintenance instance that only serves metadata."""
    disabled = [
        "io.containerd.internal.v1.opt",
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.zfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.tracing.processor.v1.otlp",
    ]
    if not cri:
        disabled.append("io.containerd.grpc.v1.cri")
    cri_plugin = "io.containerd.grpc.v1.cri"
    return f"""version = 2
root = "{paths.root}"
state = "{paths.state}"
disabled_plugins = {json.dumps(disabled)}

[grpc]
  address = "{paths.socket}"

[ttrpc]
  address = "{paths.socket}.ttrpc"

[metrics]
  address = ""

[plugins."{cri_plugin}"]
  sandbox_image = "{pause_image()}"
  # root here lacks CAP_SYS_RESOURCE: never ask for an OOM score below containerd's own.
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  # Pod network namespaces under our state dir, not /var/run/netns.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  max_container_log_line_size = 16384

[plugins."{cri_plugin}".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
  discard_unpacked_layers = false

[plugins."{cri_plugin}".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."{cri_plugin}".containerd.runtimes.runc.options]
  BinaryName = "/usr/sbin/runc"
  # runc's own state under ours, not /run/containerd/runc.
  Root = "{paths.state / "runc"}"
  SystemdCgroup = false

[plugins."{cri_plugin}".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{paths.cni_conf_dir}"
  max_conf_num = 1
"""


class Ctr:
    """`ctr` against our containerd socket, in the CRI namespace."""

    def __init__(self, socket: Path, log: Path) -> None:
        self.socket = socket
        self.log = log

    def argv(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *args]

    def run(self, *args: str, check: bool = True, stdin: int | None = None) -> str:
        with self.log.open("a") as out:
            out.write(f"$ {' '.join(self.argv(*args))}\n")
            out.flush()
            result = subprocess.run(self.argv(*args), stdin=stdin, stdout=subprocess.PIPE, stderr=out, check=False)
        if check and result.returncode != 0:
            raise HarnessError(f"ctr {' '.join(args)} failed (exit {result.returncode})", self.log)
        return result.stdout.decode(errors="replace")

    def ready(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return subprocess.run(self.argv("version"), capture_output=True, check=False, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def remove_all_containers(self) -> list[str]:
        """Kill and delete every task, then every container with its snapshot: the persistent root stays clean."""
        tasks = self.run("tasks", "ls", "-q", check=False).split()
        if tasks:
            self.run("tasks", "delete", "--force", *tasks, check=False)
        containers = self.run("containers", "ls", "-q", check=False).split()
        if containers:
            self.run("containers", "delete", *containers, check=False)
        left = self.run("containers", "ls", "-q", check=False).split()
        if left:
            raise HarnessError(f"containerd still holds {len(left)} containers after deleting them", self.log)
        return containers

    def image_refs(self) -> set[str]:
        return set(self.run("images", "ls", "-q").split())


# ------------------------------------------------------------------ images


def _podman(*args: str, log: Path, what: str) -> str:
    with log.open("a") as out:
        out.write(f"$ podman {' '.join(args)}\n")
        out.flush()
        result = subprocess.run(
            ["podman", *PODMAN_FLAGS, *args], stdout=subprocess.PIPE, stderr=out, text=True, check=False
        )
    if result.returncode != 0:
        raise HarnessError(f"{what} failed (exit {result.returncode}); last lines:\n{log_tail(log)}\n", log)
    return result.stdout.strip()


def podman_image_id(ref: str) -> str | None:
    result = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else None


def _build_scratch_image(ref: str, binary: Path, entrypoint: list[str], log: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="mailshard-node-image-") as scratch:
        context = Path(scratch)
        shutil.copy(binary, context / binary.name)
        (context / "Containerfile").write_text(
            f"FROM scratch\nCOPY {binary.name} /{binary.name}\nENTRYPOINT {json.dumps(entrypoint)}\n"
        )
        _podman("build", "--tag", ref, str(context), log=log, what=f"building image {ref}")


def ensure_harness_images(log: Path) -> None:
    """The pause and CoreDNS images in podman, built (from scratch, offline) when missing."""
    if podman_image_id(pause_image()) is None:
        with tempfile.TemporaryDirectory(prefix="mailshard-pause-") as scratch:
            binary = Path(scratch) / "pause"
            with log.open("a") as out:
                result = subprocess.run(
                    ["gcc", "-static", "-Os", "-Wall", "-o", str(binary), str(PAUSE_SOURCE)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=False,
                )
            if result.returncode != 0:
                raise HarnessError("compiling the pause binary (gcc -static) failed", log)
            subprocess.run(["strip", str(binary)], check=False)
            _build_scratch_image(pause_image(), binary, ["/pause"], log)
    if podman_image_id(coredns_image()) is None:
        coredns = build.ensure_binaries([versions.COREDNS_BINARY])["coredns"]
        with tempfile.TemporaryDirectory(prefix="mailshard-coredns-") as scratch:
            binary = Path(scratch) / "coredns"
            shutil.copy(coredns, binary)
            _build_scratch_image(coredns_image(), binary, ["/coredns"], log)


def missing_app_images() -> list[str]:
    return [image_name(name) for name in APP_IMAGES if podman_image_id(app_image_refs(name)[0]) is None]


def wanted_images() -> dict[str, tuple[str, ...]]:
    """podman ref → the names containerd must know it by."""
    wanted: dict[str, tuple[str, ...]] = {pause_image(): (pause_image(),), coredns_image(): (coredns_image(),)}
    for name in APP_IMAGES:
        podman_ref, pod_ref = app_image_refs(name)
        wanted[podman_ref] = (podman_ref, pod_ref)
    return wanted


def import_images(ctr: Ctr, paths: RuntimePaths, log: Path) -> float | None:
    """Import each wanted image whose podman ID is not the one imported last; seconds spent, None if none was."""
    try:
        imported: dict[str, str] = json.loads(paths.imported.read_text())
    except (OSError, ValueError):
        imported = {}
    wanted = wanted_images()
    present = ctr.image_refs()
    stale = []
    for ref, names in wanted.items():
        image_id = podman_image_id(ref)
        if image_id is None:
            raise HarnessError(f"image {ref} is missing from podman (run `make images`)")
        if imported.get(ref) != image_id or not set(names) <= present:
            stale.append((ref, image_id, names))
    elapsed = None
    if stale:
        started = time.monotonic()
        _import(ctr, [ref for ref, _, _ in stale], log)
        for ref, image_id, names in stale:
            for alias in names[1:]:
                ctr.run("images", "tag", "--force", ref, alias)
            imported[ref] = image_id
        paths.imported.write_text(json.dumps(imported, indent=2))
        elapsed = time.monotonic() - started
    # Older builds (and the digest-named refs an import adds) would keep their layers forever: the
    # namespace holds only our images, so drop every other name; containerd collects what is unreferenced.
    keep = {name for aliases in wanted.values() for name in aliases}
    unwanted = sorted(ctr.image_refs() - keep)
    if unwanted:
        ctr.run("images", "remove", *unwanted)
    return elapsed


def _import(ctr: Ctr, refs: list[str], log: Path) -> None:
    """`podman save | ctr images import -`: one archive for all, so shared layers are read once."""
    print(f"[node] importing {', '.join(refs)} into containerd (log: {log})", file=sys.stderr, flush=True)
    with log.open("a") as out:
        out.write(f"$ podman save --multi-image-archive {' '.join(refs)} | ctr images import -\n")
        out.flush()
        save = subprocess.Popen(
            ["podman", *PODMAN_FLAGS, "save", "--format", "docker-archive", "--multi-image-archive", *refs],
            stdout=subprocess.PIPE,
            stderr=out,
        )
        load = subprocess.run(
            # Unpacked now for overlayfs (ctr's default, and the CRI plugin's), so no pod start pays for it.
            ctr.argv("images", "import", "-"),
            stdin=save.stdout,
            stdout=out,
            stderr=out,
            check=False,
        )
        if save.stdout is not None:
            save.stdout.close()
        if save.wait() != 0 or load.returncode != 0:
            raise HarnessError("importing images into containerd failed", log)
