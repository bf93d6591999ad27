"""Builds our container images offline: a debootstrap base, host-downloaded wheels, podman.

There is no image registry here, so `FROM debian:bookworm-slim` cannot be
pulled: the base is made with `debootstrap --variant=minbase` from Debian's
mirror and imported into podman under that very name. Inside an image build
pip cannot reach the package index, so the package and its dependencies are
built into wheels on the host and copied into the build context. Debian
packages are installed by apt inside the build, pinned by version.

This machine's root lacks CAP_SYS_RESOURCE and uses cgroup v1, so podman runs
with runc, the cgroupfs manager and explicit ulimits.

    python -m mailshard_harness images [--only dovecot] [--rebuild-base]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from mailshard import __version__
from mailshard_harness.build import cache_root, logs_dir
from mailshard_harness.errors import HarnessError, log_tail

BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
BASE_ALIASES = ("localhost/debian:bookworm-slim",)
IMAGES = ("operator", "dovecot", "cyrus")
_AS_THE_MAIL_USER = (
    # The agent resolves the image's own user exactly as at a pod's start (a uid without a passwd entry
    # would stop it there), and that user is the one the member pods run as.
    "from mailshard.agent.identity import resolve_run_as; from mailshard.api.constants import MAIL_USER_ID; "
    "me = resolve_run_as(None); "
    "assert (me.uid, me.gid, me.user, me.switch) == (MAIL_USER_ID, MAIL_USER_ID, 'vmail', False), me; "
)
_CYRUS_SMOKE = """
import os, socket, subprocess, sys
from pathlib import Path
from mailshard.agent import cyruspreload, daemonlog
subprocess.run(['/usr/lib/cyrus/bin/master', '-V'], check=True)
assert all(os.access(f'/usr/lib/cyrus/bin/{name}', os.X_OK) for name in ('pop3d', 'timsieved'))
# The agent builds the sasldb (users, replication admin) with it: without it nobody can log in or replicate.
assert os.access('/usr/sbin/saslpasswd2', os.X_OK)
# A process run the way the agent runs Cyrus: its syslog(3) line arrives on the agent's socket, and its
# rand() is no longer a function of srand()'s seed alone.
receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
receiver.bind('/tmp/syslog')
receiver.settimeout(10)
env = cyruspreload.daemon_environment(dict(os.environ), cyruspreload.DEFAULT_PRELOAD, Path('/tmp/syslog'))
program = 'import ctypes, syslog; libc = ctypes.CDLL(None); libc.srand(1); syslog.syslog(str(libc.rand()))'
draws = set()
for _ in range(2):
    subprocess.run([sys.executable, '-c', program], env=env, check=True)
    draws.add(daemonlog.parse_line(receiver.recv(8192))[1].rpartition(' ')[2])
assert len(draws) == 2, draws
"""
SMOKE_TESTS: dict[str, tuple[str, ...]] = {
    # entrypoint override, arguments: each proves the image's main program runs at all, as the image's user.
    "operator": ("/opt/mailshard/bin/python", "-m", "mailshard", "--version"),
    "dovecot": (
        "/opt/mailshard/bin/python",
        "-c",
        _AS_THE_MAIL_USER + "import subprocess; subprocess.run(['dovecot', '--version'], check=True)",
    ),
    "cyrus": ("/opt/mailshard/bin/python", "-c", _AS_THE_MAIL_USER + _CYRUS_SMOKE),
}
REPOSITORY = "mailshard"
PODMAN_FLAGS = (
    "--runtime",
    "/usr/sbin/runc",
    "--cgroup-manager=cgroupfs",
)
BUILD_FLAGS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=1024:1024")
REQUIRED_TOOLS = {"podman": "podman", "debootstrap": "debootstrap", "runc": "runc"}


def image_name(name: str) -> str:
    return f"{REPOSITORY}/{name}:{__version__}"


def _say(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def _repo() -> Path:
    for parent in Path(__file__).resolve().parents:
        if (parent / "images").is_dir() and (parent / "pyproject.toml").is_file():
            return parent
    raise HarnessError("cannot find the repository (images/ and pyproject.toml) to build images from")


def _run(cmd: list[str], *, log: Path, what: str, cwd: Path | None = None) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, check=False)
    if result.returncode != 0:
        raise HarnessError(f"{what} failed (exit {result.returncode}); last lines:\n{log_tail(log, 25)}\n", log)


def check_prerequisites() -> None:
    """Say exactly what is missing, before anything starts."""
    missing = [package for tool, package in REQUIRED_TOOLS.items() if shutil.which(tool) is None]
    if not Path("/usr/sbin/runc").exists() and "runc" not in missing:
        missing.append("runc")
    if missing:
        raise HarnessError(
            f"image builds need {', '.join(missing)}: apt-get install -y {' '.join(missing)} (or run `make image-deps`)"
        )


def _image_exists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name], check=False).returncode == 0


def ensure_base(*, rebuild: bool = False) -> None:
    """debian:bookworm-slim made by debootstrap, cached as a tarball, imported into podman."""
    if not rebuild and _image_exists(BASE_IMAGE):
        return
    log = logs_dir() / "image-base.log"
    log.write_text("")
    tarball = cache_root() / "images" / "debian-bookworm-minbase.tar"
    if rebuild or not tarball.exists():
        tarball.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="mailshard-rootfs-") as scratch:
            rootfs = Path(scratch) / "rootfs"
            _say(f"debootstrap bookworm (minbase) into {rootfs}")
            _run(
                ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), "http://deb.debian.org/debian"],
                log=log,
                what="debootstrap of the base image",
            )
            (rootfs / "etc" / "apt" / "sources.list").write_text(
                "deb http://deb.debian.org/debian bookworm main\n"
                "deb http://deb.debian.org/debian bookworm-updates main\n"
                "deb http://deb.debian.org/debian-security bookworm-security main\n"
            )
            for leftover in ("var/lib/apt/lists", "var/cache/apt/archives"):
                for path in (rootfs / leftover).glob("*"):
                    if path.is_file():
                        path.unlink()
            partial = tarball.with_suffix(".partial")
            _run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], log=log, what="packing the base rootfs")
            partial.replace(tarball)
    _run(
        ["podman", *PODMAN_FLAGS, "import", "--change", 'CMD ["/bin/bash"]', str(tarball), BASE_IMAGE],
        log=log,
        what="importing the base image",
    )
    for alias in BASE_ALIASES:
        _run(["podman", "tag", BASE_IMAGE, alias], log=log, what=f"tagging {alias}")


def _wheels(repo: Path, destination: Path, log: Path) -> None:
    """The package and every dependency as wheels, built and downloaded on the host."""
    _run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(destination), str(repo)],
        log=log,
        what="building wheels for the images",
    )


def build_images(names: Iterable[str] = IMAGES, *, rebuild_base: bool = False) -> dict[str, float]:
    """Build each image; returns name → seconds. Stops at the first failure with its log's tail."""
    check_prerequisites()
    repo = _repo()
    ensure_base(rebuild=rebuild_base)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mailshard-images-") as scratch:
        wheels = Path(scratch) / "wheels"
        log = logs_dir() / "image-wheels.log"
        log.write_text("")
        _wheels(repo, wheels, log)
        for name in names:
            if name not in IMAGES:
                raise HarnessError(f"unknown image {name!r}; images are {', '.join(IMAGES)}")
            started = time.monotonic()
            context = Path(scratch) / name
            context.mkdir()
            shutil.copy(repo / "images" / name / "Dockerfile", context / "Dockerfile")
            shutil.copytree(wheels, context / "wheels")
            log = logs_dir() / f"image-{name}.log"
            log.write_text("")
            _say(f"building {image_name(name)} (log: {log})")
            _run(
                ["podman", *PODMAN_FLAGS, "build", *BUILD_FLAGS, "--tag", image_name(name), str(context)],
                log=log,
                what=f"building image {image_name(name)}",
            )
            entrypoint, *arguments = SMOKE_TESTS[name]
            _run(
                [
                    "podman",
                    *PODMAN_FLAGS,
                    "run",
                    "--rm",
                    *BUILD_FLAGS,
                    "--network=none",
                    "--entrypoint",
                    entrypoint,
                    image_name(name),
                    *arguments,
                ],
                log=log,
                what=f"smoke test of {image_name(name)}",
            )
            timings[name] = time.monotonic() - started
            _say(f"built and smoke-tested {image_name(name)} in {timings[name]:.0f} s")
    return timings
