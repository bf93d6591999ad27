"""A real Dovecot proxy and its routing sidecar on loopback, following a real cluster's routing table.

Why this module exists: the proxy tier's promise (a user's next connection
reaches the current master within a second of a failover) involves the
operator, the routing ConfigMap, the sidecar's API watch, the Lua passdb and
the proxy, and only a run with all of them proves it. KWOK runs no
containers, so this starts the proxy the image starts (configured by
`mailshard.proxy.render`, exactly as in the pod) as a local process, and runs
the sidecar's `watch` in a thread against the harness's API server. The only
difference from a pod is `resolve`: masters are reached at their local
stand-ins' addresses instead of pod DNS names.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mailshard
from mailshard.api import proxy_pod
from mailshard.proxy.render import Resolver
from mailshard.proxy.sidecar import doveadm_runner, watch
from mailshard_harness.testing import free_loopback_ports

LUA_MODULE = Path("/usr/lib/dovecot/modules/auth/libauthdb_lua.so")
SOURCE_ROOT = str(Path(mailshard.__file__).resolve().parent.parent)


def _free_ports(count: int) -> list[int]:
    return free_loopback_ports(count)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def missing() -> str | None:
    """Why a local proxy cannot run here, or None."""
    if shutil.which("dovecot") is None or shutil.which("doveadm") is None:
        return "dovecot is not installed (run .ci/install-mail-deps)"
    if not LUA_MODULE.exists():
        return "dovecot-auth-lua is not installed (run .ci/install-mail-deps)"
    return None


@dataclass
class LocalProxy:
    root: Path
    ports: dict[str, int]
    proc: subprocess.Popen[bytes] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _sidecar: threading.Thread | None = None

    @property
    def conf(self) -> Path:
        return proxy_pod.conf_dir(self.root) / "dovecot.conf"

    @property
    def routes_file(self) -> Path:
        return proxy_pod.routes_file(self.root)

    @property
    def log_path(self) -> Path:
        return self.root / "proxy.log"

    @classmethod
    def start(cls, root: Path, *, serve_args: Sequence[str] = (), user: str | None = None) -> LocalProxy:
        """Start the proxy on free loopback ports; it refuses every login until a table arrives.

        `serve_args` are more arguments of `serve` (a Deployment's, say: `--protocols`, `--tls-dir`); with
        `--tls-dir` the implicit-TLS ports are served too. `user` runs it unprivileged, as the pod does.
        """
        problem = missing()
        if problem is not None:
            raise RuntimeError(problem)
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o777 if user is not None else 0o755)  # an emptyDir is world-writable
        names = ["imap", "pop3", "lmtp", "managesieve"] + (["imaps", "pop3s"] if "--tls-dir" in serve_args else [])
        ports = dict(zip(names, _free_ports(len(names)), strict=True))
        proxy = cls(root, ports)
        # Exactly the proxy container's command (`mailshard.builders.proxy`), on loopback ports.
        argv = [sys.executable, "-m", "mailshard.proxy", "serve", *serve_args, "--dir", str(root)]
        argv += ["--listen", "127.0.0.1"]
        argv += [arg for name, port in ports.items() for arg in ("--port", f"{name}={port}")]
        if user is not None:
            entry = pwd.getpwnam(user)
            argv = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups", *argv]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [SOURCE_ROOT, os.environ.get("PYTHONPATH")])))
        with open(proxy.log_path, "ab") as log:
            proxy.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        deadline = time.monotonic() + 20
        while not all(_listening(port) for port in ports.values()):
            if proxy.proc.poll() is not None or time.monotonic() > deadline:
                proxy.stop()
                raise RuntimeError(f"the proxy did not start:\n{proxy.log_tail()}")
            time.sleep(0.05)
        return proxy

    def doveadm(self, args: Sequence[str]) -> str:
        """`doveadm <args>` against this proxy (what the sidecar runs to list and kick sessions)."""
        return doveadm_runner(self.conf)(args)

    def follow(self, *, cluster: str, namespace: str, kubeconfig: Path, resolve: Resolver) -> None:
        """Run the routing sidecar's API watch in a thread until `stop`."""
        self._sidecar = threading.Thread(
            target=watch,
            kwargs={
                "cluster": cluster,
                "namespace": namespace,
                "routes_file": self.routes_file,
                "doveadm": doveadm_runner(self.conf),
                "kubeconfig": str(kubeconfig),
                "resolve": resolve,
                "stop": self._stop.is_set,
            },
            name="routing-sidecar",
            daemon=True,  # the watch checks `stop` between events; a quiet watch ends with the process
        )
        self._sidecar.start()

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
