"""The operator as a real process for the integration tier, with its own least-privilege identity.

It runs `python -m mailshard run` exactly as the image will, authenticated as
a ServiceAccount bound to the ClusterRole of `mailshard.rbac`, so the tests
also prove that those permissions are enough.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client

from mailshard_harness import build, versions
from mailshard_harness.identity import OPERATOR_USER, install_operator_identity
from mailshard_harness.testing import eventually, free_loopback_ports

__all__ = [
    "OPERATOR_USER",
    "AuditLog",
    "OperatorProcess",
    "eventually",
    "free_port",
    "install_operator_identity",
    "kubectl",
]

REPO = Path(__file__).resolve().parents[2]


def kubectl(
    kubeconfig: Path, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    binary = build.bin_path(versions.KUBECTL_BINARY)
    return subprocess.run(
        [str(binary), f"--kubeconfig={kubeconfig}", *args], input=stdin, capture_output=True, text=True, check=check
    )


class OperatorProcess:
    """`python -m mailshard run` as a child process; restartable; logs kept for failures."""

    def __init__(
        self,
        kubeconfig: Path,
        log: Path,
        *,
        resync_seconds: float,
        args: Sequence[str] = ("--standalone", "--liveness", ""),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log = log
        self.resync_seconds = resync_seconds
        self.args = tuple(args)
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.metrics_url: str | None = None
        """Where the operator serves Prometheus metrics, when it was started with --metrics-address."""

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "MAILSHARD_RESYNC_SECONDS": str(self.resync_seconds),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mailshard", "run", *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash or an evicted pod would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def serving_metrics(self) -> bool:
        """Whether /metrics answers yet (the process takes a few seconds to import and start kopf)."""
        assert self.metrics_url is not None
        self.assert_running()
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=5):
                return True
        except OSError:
            return False

    def assert_running(self) -> None:
        assert self.process is not None
        assert self.process.poll() is None, f"the operator exited; see {self.log}"


class AuditLog:
    """Counts API writes from the harness' audit log, by user and namespace."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        with self.path.open() as log:
            return sum(1 for _ in log)

    def writes(self, *, user: str, namespace: str, since: int = 0) -> list[str]:
        found = []
        with self.path.open() as log:
            for index, line in enumerate(log):
                if index < since:
                    continue
                event: dict[str, Any] = json.loads(line)
                ref = event.get("objectRef") or {}
                if (
                    event.get("stage") == "ResponseComplete"
                    and event.get("user", {}).get("username") == user
                    and ref.get("namespace") == namespace
                ):
                    found.append(
                        f"{event['verb']} {ref.get('resource')}/{ref.get('name', '')}"
                        + (f"/{ref['subresource']}" if ref.get("subresource") else "")
                    )
        return found


def free_port() -> int:
    return free_loopback_ports(1)[0]


def decode_secret(secret: client.V1Secret) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
