"""Reconcile at scale: N MailShards on the real control plane with KWOK nodes, until every one is Ready.

Issue 8's first figure: how long the operator takes to bring N shards (2N pods,
2N local volumes) to Ready on this 2-core machine, its peak RSS and CPU while
doing it, and what it writes to the API once everything is Ready and nothing
changes (the goal is no writes at all). Everything runs for real but the
containers: etcd, kube-apiserver, controller-manager, scheduler, KWOK nodes,
the harness' local-volume provisioner, and the operator as a process under its
least-privilege identity, exactly as the integration tier runs it. KWOK pods
have no agents, so each shard's failover monitor polls two addresses nobody
answers on: that cost is part of the figure, as it would be in a cluster whose
agents are all down.

    .venv/bin/python bench/reconcile_scale.py --shards 100
    .venv/bin/python bench/reconcile_scale.py --shards 1000 --nodes 4

Prints one JSON document. Everything it starts is stopped on exit, Ctrl-C and
SIGTERM included; if it cannot run (binaries not built), it says why in one
line and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from mailshard_harness import build, versions  # noqa: E402
from mailshard_harness.cluster import ClusterConfig, ControlPlane  # noqa: E402
from mailshard_harness.errors import HarnessError  # noqa: E402
from mailshard_harness.identity import OPERATOR_USER, install_operator_identity  # noqa: E402
from mailshard_harness.testing import eventually, kubectl_apply  # noqa: E402

GROUP, VERSION = "mailshard.io", "v1alpha1"
NAMESPACE = "scale"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ProcessSampler:
    """Peak RSS and CPU seconds of one process, sampled from /proc every half second."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss = 0
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak_rss = max(self.peak_rss, int(line.split()[1]) * 1024)
                self.samples.append((time.monotonic(), self.cpu_seconds()))
            except OSError:
                return
            self._stop.wait(0.5)

    def start(self) -> ProcessSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def cpu_between(self, start: float, end: float) -> float:
        """Average CPU use (1.0 = one core) over [start, end]."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return 0.0
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


def operator_requests(audit_log: Path, since_line: int, until_line: int | None = None) -> list[tuple[str, str, str]]:
    """(verb, resource, name) of every request the operator made, from the API server's audit log."""
    found = []
    with audit_log.open() as log:
        for index, line in enumerate(log):
            if index < since_line:
                continue
            if until_line is not None and index >= until_line:
                break
            event: dict[str, Any] = json.loads(line)
            if event.get("stage") == "ResponseComplete" and event.get("user", {}).get("username") == OPERATOR_USER:
                ref = event.get("objectRef") or {}
                resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
                found.append((event["verb"], resource, ref.get("name", "")))
    return found


def operator_writes(audit_log: Path, since_line: int) -> list[str]:
    return [
        f"{verb} {resource}/{name}"
        for verb, resource, name in operator_requests(audit_log, since_line)
        if verb in WRITE_VERBS
    ]


def by_verb(requests: list[tuple[str, str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for verb, resource, _ in requests:
        key = f"{verb} {resource}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def settle(audit_log: Path, quiet_seconds: float, limit: float) -> float:
    """Waits until the operator wrote nothing for `quiet_seconds` (or `limit` passed); returns the wait."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        mark = lines(audit_log)
        time.sleep(quiet_seconds)
        if not operator_writes(audit_log, mark):
            break
    return time.monotonic() - started


def lines(path: Path) -> int:
    with path.open() as log:
        return sum(1 for _ in log)


def manifests(shards: int) -> list[dict[str, Any]]:
    cluster = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MailCluster",
        "metadata": {"name": "scale", "namespace": NAMESPACE},
        "spec": {
            "proxy": {"replicas": 1},
            "routing": {"slots": 4096},
            "shardDefaults": {"storage": {"storageClassName": "mailshard-local", "size": "64Mi"}},
        },
    }
    return [cluster] + [
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "MailShard",
            "metadata": {"name": f"shard-{n:04d}", "namespace": NAMESPACE},
            "spec": {"backend": "dovecot" if n % 2 == 0 else "cyrus", "clusterRef": {"name": "scale"}},
        }
        for n in range(shards)
    ]


def ready_count(custom: client.CustomObjectsApi) -> int:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "mailshards")["items"]
    return sum(
        1
        for item in items
        if any(c["type"] == "Ready" and c["status"] == "True" for c in (item.get("status") or {}).get("conditions", []))
    )


def run(
    shards: int, nodes: int, idle_seconds: float, timeout: float, resync_seconds: float, *, keep_audit: Path | None
) -> dict[str, Any]:
    name = f"bench-scale-{os.getpid()}"
    plane = ControlPlane.start(
        ClusterConfig(name=name, nodes=nodes, pods_per_node=max(110, 2 * shards), owner_pid=os.getpid())
    )
    operator: subprocess.Popen[bytes] | None = None
    try:
        api = config.new_client_from_config(config_file=str(plane.kubeconfig))
        kubectl = str(build.bin_path(versions.KUBECTL_BINARY))
        subprocess.run(
            [kubectl, f"--kubeconfig={plane.kubeconfig}", "apply", "--server-side", "-f", str(REPO / "crds")],
            check=True,
            capture_output=True,
        )
        extensions = client.ApiextensionsV1Api(api)
        for crd in ("mailshards.mailshard.io", "mailclusters.mailshard.io"):
            eventually(
                lambda crd=crd: any(
                    c.type == "Established" and c.status == "True"
                    for c in extensions.read_custom_resource_definition(crd).status.conditions or []
                ),
                what=f"CRD {crd} established",
            )
        client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
        identity = install_operator_identity(api, plane.kubeconfig, plane.directory)
        log = plane.directory / "logs" / "operator.log"
        with log.open("ab") as out:
            operator = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mailshard",
                    "run",
                    "--standalone",
                    "--liveness",
                    "",
                    f"--kubeconfig={identity}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONPATH=str(REPO / "operator"), MAILSHARD_RESYNC_SECONDS=str(resync_seconds)),
                start_new_session=True,
            )
        sampler = ProcessSampler(operator.pid).start()
        time.sleep(3)  # the operator's start-up, outside the measured window
        custom = client.CustomObjectsApi(api)
        applied, start_line = time.monotonic(), lines(plane.audit_log)
        kubectl_apply(plane.kubeconfig, manifests(shards), cache_dir=plane.directory / "kube-cache", what="shards")
        ready, progress = 0, []
        while ready < shards:
            if time.monotonic() - applied > timeout:
                raise HarnessError(f"only {ready} of {shards} shards Ready after {timeout:.0f} s (log: {log})")
            if operator.poll() is not None:
                raise HarnessError(f"the operator exited with {operator.returncode} (log: {log})")
            time.sleep(1)
            ready = ready_count(custom)
            progress.append((round(time.monotonic() - applied, 1), ready))
        all_ready = time.monotonic()
        rss_to_ready = sampler.peak_rss
        ramp = operator_requests(plane.audit_log, start_line)
        # The last status writes and their echoes; a shard that never stops writing shows up as the limit.
        settled = settle(plane.audit_log, quiet_seconds=15, limit=120)
        mark, idle_from = lines(plane.audit_log), time.monotonic()
        time.sleep(idle_seconds)
        idle_requests = operator_requests(plane.audit_log, mark)
        idle_writes = operator_writes(plane.audit_log, mark)
        idle_to = time.monotonic()
        sampler.stop()
        return {
            "shards": shards,
            "pods": 2 * shards,
            "nodes": nodes,
            "seconds_until_all_ready": round(all_ready - applied, 1),
            "ready_progress": progress[:: max(1, len(progress) // 12)],
            "operator_peak_rss_mib_until_ready": round(rss_to_ready / 2**20),
            "operator_peak_rss_mib": round(sampler.peak_rss / 2**20),
            "operator_cpu_cores_until_ready": round(sampler.cpu_between(applied, all_ready), 2),
            "operator_cpu_cores_idle": round(sampler.cpu_between(idle_from, idle_to), 2),
            "operator_requests_until_ready": len(ramp),
            "operator_requests_per_shard_until_ready": round(len(ramp) / shards, 1),
            "operator_requests_until_ready_by_verb": by_verb(ramp),
            "seconds_until_quiet_after_ready": round(settled, 1),
            "idle_seconds": idle_seconds,
            "resync_seconds": resync_seconds,
            "idle_api_requests_per_minute": round(len(idle_requests) * 60 / idle_seconds, 1),
            "idle_api_requests_by_verb": by_verb(idle_requests),
            "idle_api_writes": len(idle_writes),
            "idle_api_writes_per_minute": round(len(idle_writes) * 60 / idle_seconds, 1),
            "idle_write_examples": idle_writes[:5],
        }
    finally:
        if operator is not None and operator.poll() is None:
            os.killpg(operator.pid, signal.SIGTERM)
            try:
                operator.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(operator.pid, signal.SIGKILL)
        if keep_audit is not None and plane.audit_log.exists():
            shutil.copyfile(plane.audit_log, keep_audit)
        plane.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=4)
    # The idle window spans several resyncs, so that a resync that writes is seen.
    parser.add_argument("--idle-seconds", type=float, default=120)
    parser.add_argument("--resync-seconds", type=float, default=30)
    # Every write of every component, timestamped: where a slow ramp spends its time.
    parser.add_argument("--keep-audit", type=Path, help="copy the API server's audit log (all writes) here")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    missing = [b.name for b in versions.CONTROL_PLANE_BINARIES if not build.bin_path(b).exists()]
    if missing:
        print(f"reconcile_scale: binaries not built ({', '.join(missing)}): run `make build-k8s`", file=sys.stderr)
        return 1
    # SIGTERM tears down like Ctrl-C (the finally clause above).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = run(
            args.shards, args.nodes, args.idle_seconds, args.timeout, args.resync_seconds, keep_audit=args.keep_audit
        )
    except HarnessError as error:
        print(f"reconcile_scale: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("reconcile_scale: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
