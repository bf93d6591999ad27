"""Helpers every tier's tests share: waiting for a condition, applying manifests with the pinned kubectl, scraping.

Tests and harness code poll the real API server for outcomes (a pod Running,
a status written) rather than sleeping a guessed time; one `eventually` keeps
the polling and its failure message the same everywhere.
"""

from __future__ import annotations

import random
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from mailshard_harness import build, versions
from mailshard_harness.errors import HarnessError

T = TypeVar("T")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""Prometheus samples by (sample name, sorted labels)."""


def eventually(check: Callable[[], T | None], *, timeout: float = 60, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` seconds.

    API errors while polling (an object not created yet) count as "not yet"; the last one is reported.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except client.ApiException as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(
        f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last})" if last else "")
    )


def kubectl_apply(kubeconfig: Path, manifests: Sequence[dict[str, Any]], *, cache_dir: Path, what: str) -> None:
    """Server-side apply with the pinned kubectl; a discovery cache per instance, not in ~/.kube/cache."""
    result = subprocess.run(
        [
            str(build.bin_path(versions.KUBECTL_BINARY)),
            f"--kubeconfig={kubeconfig}",
            f"--cache-dir={cache_dir}",
            "apply",
            "--server-side",
            "-f",
            "-",
        ],
        input=yaml.safe_dump_all(list(manifests)),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise HarnessError(f"applying {what} failed: {result.stderr.strip()}")


def scrape(url: str) -> Samples:
    """Every sample a Prometheus endpoint serves now."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the sample with exactly these labels, or None when it is not exported."""
    return samples.get((name, tuple(sorted(labels.items()))))


_HANDED_OUT: set[int] = set()
_lock_ports = threading.Lock()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_loopback_ports(count: int, *, host: str = "127.0.0.1") -> list[int]:
    """Ports for servers a test starts, below the kernel's ephemeral range and never handed out twice.

    A port the kernel picks (bind to port 0) comes from the range every outgoing connection draws its local
    port from: between our check and the daemon's listen, a client's connection took one (Dovecot's
    imap-login failed with "Address already in use" in CI). Below that range only servers bind.
    """
    low = min(_ephemeral_low(), 65536)
    ports: list[int] = []
    with _lock_ports:
        while len(ports) < count:
            port = random.randint(10000, low - 1)
            if port in _HANDED_OUT:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            ports.append(port)
    return ports
