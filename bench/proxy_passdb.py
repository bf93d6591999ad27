"""The proxy's passdb, chosen by measurement: route change → the next lookup sees the new host.

    .venv/bin/python bench/proxy_passdb.py [--flips 40]

Starts a real Dovecot proxy (``mailshard.proxy.render``) three times, each with
another passdb, flips one user's route between two hosts of the same length
(so the file keeps its size) and times, per flip, the atomic write → the first
``doveadm auth lookup`` answering the new host (the lookup a login makes):

- ``passwd-file``: a passwd-file rewritten atomically (rename), nothing else;
- ``passwd-file+mtime``: the same, with the mtime set one second past the last
  one on every write, as the passwd-file driver only re-reads on an mtime
  (whole seconds) or size change;
- ``lua``: the Lua passdb re-reading the route file at every lookup.

A flip not seen within ``--give-up`` seconds counts as missed. Needs root (or
the proxy's user) and ``.ci/install-mail-deps``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from mailshard.api.routing import RoutingTable, ShardRoute, ShardState
from mailshard.proxy.render import ProxyPorts, ProxySettings, render_proxy, render_routes
from mailshard.proxy.sidecar import write_atomically

USER = "alice@example.test"
HOSTS = ("10.0.0.1", "10.0.0.2")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _lookup_host(conf: Path) -> str | None:
    done = subprocess.run(
        ["doveadm", "-c", str(conf), "auth", "lookup", USER],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    for line in done.stdout.splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == "host":
            return value.strip()
    return None


def run(variant: str, flips: int, give_up: float) -> tuple[list[float], int]:
    root = Path(tempfile.mkdtemp(prefix="pb-"))
    root.chmod(0o755)
    for sub in ("conf", "routes", "run"):
        (root / sub).mkdir(mode=0o755)
    user = "vmail" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
    routes = root / "routes" / ("routes.txt" if variant == "lua" else "passwd")
    settings = ProxySettings(
        base_dir=root / "run",
        conf_dir=root / "conf",
        routes_file=routes,
        user=user,
        group=user,
        listen="127.0.0.1",
        ports=ProxyPorts(*_free_ports(4)),
    )
    files = render_proxy(settings)
    if variant != "lua":
        files["dovecot.conf"] = files["dovecot.conf"].replace(
            f"  driver = lua\n  args = file={root}/conf/routes.lua blocking=yes\n",
            f"  driver = passwd-file\n  args = {routes}\n",
        )
        assert "passwd-file" in files["dovecot.conf"]
    for name, text in files.items():
        (root / "conf" / name).write_text(text)
    conf = root / "conf" / "dovecot.conf"

    def publish(host: str, version: int) -> None:
        if variant == "lua":
            table = RoutingTable(
                version=version,
                slots=("s1",),
                shards={"s1": ShardRoute(ShardState.SERVING, master="m", master_host=host)},
            )
            write_atomically(routes, render_routes(table))
            return
        write_atomically(routes, f"{USER}:::::::proxy=y nopassword=y host={host} port=143\n")
        if variant == "passwd-file+mtime":
            last = publish.mtime if hasattr(publish, "mtime") else int(time.time())  # type: ignore[attr-defined]
            stamp = max(int(time.time()), last + 1)
            os.utime(routes, (stamp, stamp))
            publish.mtime = stamp  # type: ignore[attr-defined]

    publish(HOSTS[0], 1)
    daemon = subprocess.Popen(
        ["dovecot", "-F", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 20
        while _lookup_host(conf) != HOSTS[0]:
            if time.monotonic() > deadline:
                raise SystemExit(f"{variant}: the proxy never answered a lookup")
            time.sleep(0.1)
        delays: list[float] = []
        missed = 0
        for flip in range(1, flips + 1):
            host = HOSTS[flip % 2]
            started = time.monotonic()
            publish(host, flip + 1)
            while (seen := _lookup_host(conf)) != host and time.monotonic() - started < give_up:
                time.sleep(0.01)
            if seen == host:
                delays.append(time.monotonic() - started)
            else:
                missed += 1
        return delays, missed
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flips", type=int, default=40)
    parser.add_argument("--give-up", type=float, default=3.0)
    args = parser.parse_args()
    for variant in ("passwd-file", "passwd-file+mtime", "lua"):
        delays, missed = run(variant, args.flips, args.give_up)
        delays.sort()
        if delays:
            p50 = statistics.median(delays) * 1000
            p99 = delays[round(0.99 * (len(delays) - 1))] * 1000
            print(f"{variant:18} seen {len(delays)}/{args.flips}, missed {missed}: p50 {p50:.0f} ms, p99 {p99:.0f} ms")
        else:
            print(f"{variant:18} seen 0/{args.flips}, missed {missed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
