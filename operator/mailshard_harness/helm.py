"""The pinned Helm, run the way every tier and the demo run it.

Why this module exists: the integration tier, the e2e tier and `make demo` all
install our chart with the Helm this harness builds, and each must keep a
user's own Helm configuration (repositories, plugins, caches under ~/.config
and ~/.cache) out of the run. One function keeps that isolation the same
everywhere.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from mailshard_harness import build, versions
from mailshard_harness.errors import HarnessError

HELM_TIMEOUT_SECONDS = 600.0


def helm(kubeconfig: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`helm <args>` against `kubeconfig`, with throwaway Helm homes; raises HarnessError on failure if `check`."""
    with tempfile.TemporaryDirectory(prefix="mailshard-helm-") as home:
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "HELM_CACHE_HOME": home,
            "HELM_CONFIG_HOME": home,
            "HELM_DATA_HOME": home,
        }
        result = subprocess.run(
            [str(build.bin_path(versions.HELM_BINARY)), *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=HELM_TIMEOUT_SECONDS,
        )
    if check and result.returncode != 0:
        raise HarnessError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def install_chart(
    kubeconfig: Path,
    chart: Path,
    *,
    release: str,
    namespace: str,
    values: tuple[Path, ...] = (),
    settings: dict[str, str] | None = None,
    timeout: str = "5m",
) -> None:
    """`helm upgrade --install`, creating the namespace, waited until the release's workloads are ready."""
    args = ["upgrade", "--install", release, str(chart), "--namespace", namespace, "--create-namespace"]
    for path in values:
        args += ["--values", str(path)]
    for key, value in (settings or {}).items():
        args += ["--set", f"{key}={value}"]
    helm(kubeconfig, *args, "--wait", "--timeout", timeout)
