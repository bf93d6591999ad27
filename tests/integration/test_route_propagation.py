"""A routing table change, through the API watch and the real sidecar process, to the next login on the new master.

The mail tier flips routes by calling `apply_table` itself; here nothing is
skipped between the API and the login: the `<cluster>-routing` ConfigMap is
written as the operator writes it (the canonical document stamped with
`writtenAt`, its digest annotation, a merge patch conditional on the
resourceVersion), the sidecar is `python -m mailshard.proxy follow` exactly as
the proxy pod runs it (only `--dir`, `--kubeconfig` and `--backend-port`
differ), its watch rewrites the route file, and a real Dovecot proxy
(`mailshard_harness.local_proxy`) forwards real IMAP logins to one of two real
Dovecot masters run by our agent, each at its own loopback address on the same
ports, each with a marker mailbox that says which one a login reached.

Timing: each flip is timed from the ConfigMap write to the first login through
the proxy that lands on the new master; every flip must land (none missed),
the median must be under the issue's 1 s and each under `GENEROUS_BOUND`, as
in `test_routing_table`; p50/p99/max are printed (figures go to bench/).

The same sidecar process, killed and started again beside its route file (a
container restart within its pod), still refuses a table older than the one it
had applied, and takes a recreated one.
"""

from __future__ import annotations

import datetime
import imaplib
import ipaddress
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from kubernetes import client
from operator_support import eventually, free_port
from routing_support import describe

from mailshard.api import proxy_pod
from mailshard.api.routing import TABLE_KEY, RoutingTable, ShardRoute, ShardState, render_table, table_digest
from mailshard.builders.routing import ANNOTATION_ROUTING_DIGEST
from mailshard.proxy.sidecar import last_applied
from mailshard_harness import cluster, local_proxy
from mailshard_harness.local_agents import LOCAL_MAIL_PORTS, LocalMember
from mailshard_harness.local_proxy import LocalProxy
from mailshard_harness.testing import Samples, sample, scrape

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("operator")]

GENEROUS_BOUND = 3.0
"""Seconds any one flip may take on this shared 2-core machine; the target is 1 s (see test_routing_table)."""
FLIPS = 24
CLUSTER = "flips"
"""No MailCluster has this name, so the operator leaves `flips-routing` to the test."""
USERS = {f"flip{n}@example.test": f"pw-{n}" for n in range(1, 4)}
DOVEADM_PORT = 12345
AGENT_PORT = 8080


def _loopback_addresses(count: int) -> list[str]:
    """Free loopback addresses for the masters: in 127.128.0.0/9, beyond the harness' node and pod ranges."""
    assert cluster.POD_RANGE.broadcast_address < ipaddress.IPv4Address("127.128.0.0")
    found: list[str] = []
    while len(found) < count:
        address = str(ipaddress.IPv4Address("127.128.0.0") + random.randrange(1, 2**23 - 1))
        try:
            for port in (*LOCAL_MAIL_PORTS.values(), DOVEADM_PORT, AGENT_PORT):
                with socket.socket() as sock:
                    sock.bind((address, port))
        except OSError:
            continue
        if address not in found:
            found.append(address)
    return found


@dataclass
class Master:
    """A Dovecot master run by our agent, whose replica never runs, at its own loopback address."""

    name: str
    member: LocalMember


def start_master(root: Path, name: str, address: str, *, absent_replica: str) -> Master:
    root.mkdir(parents=True)
    (root / "data").mkdir()
    for directory in (root, root / "data"):
        directory.chmod(0o755)
    users_file = root / "users"
    users_file.write_text("".join(f"{user}:{{PLAIN}}{password}::::::\n" for user, password in USERS.items()))
    users_file.chmod(0o644)
    (root / "token").write_text("flips\n")
    (root / "data" / "role").write_text("master\n")
    config = {
        "shard": CLUSTER,
        "member": f"{CLUSTER}-{name}",
        "listenAddress": address,
        "ports": {**LOCAL_MAIL_PORTS, "doveadm": DOVEADM_PORT},
        # A master must name a replica; this one is never started, so nothing replicates between the two masters.
        "peer": {"name": f"{CLUSTER}-{name}-replica", "host": absent_replica, "doveadmPort": DOVEADM_PORT},
        "usersFile": str(users_file),
        "doveadmPassword": "flips-secret",
        "mailDir": str(root / "data" / "mail"),
    }
    (root / "runtime.json").write_text(json.dumps(config))
    member = LocalMember(f"{CLUSTER}-{name}", root, address)
    member.start()
    return Master(name, member)


def login(address: str, port: int, user: str) -> imaplib.IMAP4:
    client_ = imaplib.IMAP4(address, port, timeout=10)
    client_.login(user, USERS[user])
    return client_


def reached(client_: imaplib.IMAP4) -> str:
    """Which master this session is on: the one marker mailbox (`at-<name>`) it lists."""
    typ, data = client_.list('""', "at-*")
    assert typ == "OK", data
    names = [item.decode().rsplit(" ", 1)[-1].strip('"') for item in data if isinstance(item, bytes)]
    assert len(names) == 1, names
    return names[0].removeprefix("at-")


@pytest.fixture
def masters(mail_available: None, request: pytest.FixtureRequest) -> Iterator[dict[str, Master]]:
    """Two standalone masters, "a" and "b", each with a marker mailbox for every user."""
    problem = local_proxy.missing()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{problem}: CI must run .ci/install-mail-deps first")
        pytest.skip(problem)
    base = Path(tempfile.mkdtemp(prefix="ms-rp-"))  # short: Dovecot's socket paths must stay under 108 bytes
    base.chmod(0o755)  # the daemons run as vmail
    started: dict[str, Master] = {}
    try:
        a, b, nobody = _loopback_addresses(3)
        for name, address in (("a", a), ("b", b)):
            started[name] = start_master(base / name, name, address, absent_replica=nobody)
        for master in started.values():
            for user in USERS:

                def marked(master: Master = master, user: str = user) -> bool:
                    try:
                        session = login(master.member.ip, LOCAL_MAIL_PORTS["imap"], user)
                    except (OSError, imaplib.IMAP4.error):
                        return False
                    try:
                        answer = session.create(f"at-{master.name}")
                        return answer[0] == "OK"
                    finally:
                        session.logout()

                eventually(marked, timeout=60, what=f"a marker on master {master.name} for {user}")
        yield started
    finally:
        for master in started.values():
            master.member.stop()
            request.node.add_report_section("teardown", f"master {master.name}", master.member.log_tail())
        shutil.rmtree(base, ignore_errors=True)


class Publisher:
    """Writes `<cluster>-routing` as the operator's routing service does (`mailshard.services.routing`)."""

    def __init__(self, core: client.CoreV1Api, namespace: str) -> None:
        self.core, self.namespace, self.name = core, namespace, f"{CLUSTER}-routing"

    def publish(self, table: RoutingTable) -> RoutingTable:
        """`table` stamped with the time of this write, as the operator stamps each version it publishes."""
        stamped = replace(table, written_at=datetime.datetime.now(datetime.UTC))
        self.write(render_table(stamped))
        return stamped

    def write(self, text: str) -> None:
        annotations = {ANNOTATION_ROUTING_DIGEST: table_digest(text)}
        try:
            live = self.core.read_namespaced_config_map(self.name, self.namespace)
        except client.ApiException as error:
            if error.status != 404:
                raise
            body = {"metadata": {"name": self.name, "annotations": annotations}, "data": {TABLE_KEY: text}}
            self.core.create_namespaced_config_map(self.namespace, body)
            return
        patch = {
            "metadata": {"resourceVersion": live.metadata.resource_version, "annotations": annotations},
            "data": {TABLE_KEY: text},
        }
        self.core.patch_namespaced_config_map(self.name, self.namespace, patch)


def serving(master: Master) -> ShardRoute:
    return ShardRoute(state=ShardState.SERVING, master=master.member.name, master_host=master.member.ip)


@pytest.fixture
def proxy(request: pytest.FixtureRequest) -> Iterator[LocalProxy]:
    root = Path(tempfile.mkdtemp(prefix="ms-rpp-"))
    started = LocalProxy.start(root)
    try:
        yield started
    finally:
        started.stop()
        request.node.add_report_section("teardown", "proxy log", started.log_tail())
        request.node.add_report_section("teardown", "sidecar log", _tail(root / "sidecar.log"))
        shutil.rmtree(root, ignore_errors=True)


def start_sidecar(state: Path, namespace: str, kubeconfig: Path, metrics_port: int) -> subprocess.Popen[bytes]:
    """`python -m mailshard.proxy follow` as the pod's routing container runs it, on the pod directory `state`."""
    argv = [sys.executable, "-m", "mailshard.proxy", "follow", "--cluster", CLUSTER, "--namespace", namespace]
    argv += ["--dir", str(state), "--kubeconfig", str(kubeconfig)]
    argv += ["--metrics-address", f"127.0.0.1:{metrics_port}"]
    argv += [arg for name, port in LOCAL_MAIL_PORTS.items() for arg in ("--backend-port", f"{name}={port}")]
    with (state / "sidecar.log").open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_table_flips_move_the_next_login_through_the_sidecar_process(
    api_client: client.ApiClient,
    kubeconfig: Path,
    namespace: str,
    masters: dict[str, Master],
    proxy: LocalProxy,
) -> None:
    publisher = Publisher(client.CoreV1Api(api_client), namespace)
    table = publisher.publish(RoutingTable(version=1, slots=("s1",) * 16, shards={"s1": serving(masters["a"])}))
    metrics_port = free_port()
    sidecar = start_sidecar(proxy.root, namespace, kubeconfig, metrics_port)
    user = sorted(USERS)[0]

    def lands_on(target: str) -> bool:
        assert sidecar.poll() is None, _tail(proxy.root / "sidecar.log")
        try:
            session = login("127.0.0.1", proxy.ports["imap"], user)
        except (OSError, imaplib.IMAP4.error):
            return False
        try:
            return reached(session) == target
        finally:
            session.logout()

    try:
        eventually(lambda: lands_on("a"), timeout=30, what="a first login through the sidecar's route file")
        delays: list[float] = []
        for flip in range(FLIPS):
            target = "b" if flip % 2 == 0 else "a"
            started = time.monotonic()
            table = publisher.publish(
                replace(table, version=table.version + 1, shards={"s1": serving(masters[target])})
            )
            landed: float | None = None
            while landed is None and time.monotonic() - started < GENEROUS_BOUND:
                session = login("127.0.0.1", proxy.ports["imap"], user)  # both masters serve: never refused
                try:
                    if reached(session) == target:
                        landed = time.monotonic()
                finally:
                    session.logout()
            assert landed is not None, f"flip {flip}: no login reached {target} within {GENEROUS_BOUND} s (missed)"
            delays.append(landed - started)
            assert lands_on(target), f"flip {flip}: a later login went back to the old master"
        samples = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        sidecar.terminate()
        sidecar.wait(10)
    print(f"\nConfigMap write -> sidecar process -> first login on the new master: {describe(delays)}, none missed")
    labels = {"namespace": namespace, "cluster": CLUSTER}
    assert sample(samples, "mailshard_proxy_routing_table_version", **labels) == table.version
    assert sample(samples, "mailshard_proxy_route_propagation_seconds_count", **labels) == FLIPS
    assert sample(samples, "mailshard_proxy_routing_tables_refused_total", **labels) == 0
    assert statistics.median(delays) < 1.0, describe(delays)
    assert max(delays) < GENEROUS_BOUND, describe(delays)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def test_a_restarted_sidecar_still_refuses_a_table_older_than_the_one_it_applied(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    """The sidecar process killed and started again beside its route file, as when its container restarts."""
    core = client.CoreV1Api(api_client)
    publisher = Publisher(core, namespace)
    routes = proxy_pod.routes_file(tmp_path)
    metrics_port = free_port()
    labels = {"namespace": namespace, "cluster": CLUSTER}

    def table(version: int, host: str) -> RoutingTable:
        return RoutingTable(
            version=version, slots=("s1",) * 4, shards={"s1": ShardRoute(ShardState.SERVING, "m", host)}
        )

    def in_force() -> tuple[int, str] | None:
        lines = routes.read_text().splitlines() if routes.exists() else []
        version = next((int(line.split()[1]) for line in lines if line.startswith("version ")), None)
        host = next((line.split()[4] for line in lines if line.startswith("run ")), None)
        return (version, host) if version is not None and host is not None else None

    def remembered() -> int | None:
        applied = last_applied(routes)
        return applied.version if applied is not None else None

    first = publisher.publish(table(1, "127.1.0.1"))
    sidecar = start_sidecar(tmp_path, namespace, kubeconfig, metrics_port)
    try:
        eventually(lambda: in_force() == (1, "127.1.0.1"), timeout=30, what="version 1 in force")
        publisher.publish(table(2, "127.1.0.2"))
        eventually(lambda: in_force() == (2, "127.1.0.2"), timeout=30, what="version 2 in force")
        # The route file is written before the remembered document: a kill between the two would leave version 1
        # remembered, and the old copy below would be no older than it.
        eventually(lambda: remembered() == 2, timeout=30, what="version 2 remembered for the next start")
        sidecar.kill()  # a crash: nothing is cleaned up
        sidecar.wait(10)

        # While it is down, an old copy of the table comes back (a GitOps revert, a restored backup).
        publisher.write(render_table(first))
        sidecar = start_sidecar(tmp_path, namespace, kubeconfig, metrics_port)

        def refused_once() -> Samples | None:
            assert sidecar.poll() is None, _tail(tmp_path / "sidecar.log")
            try:
                samples = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
            except OSError:
                return None
            return samples if sample(samples, "mailshard_proxy_routing_tables_refused_total", **labels) else None

        # A cold Python start, a kubeconfig load and a LIST: seconds on a loaded machine, so a generous bound.
        samples = eventually(refused_once, timeout=90, what="the old copy refused after the restart")
        assert sample(samples, "mailshard_proxy_routing_table_version", **labels) == 2
        assert in_force() == (2, "127.1.0.2"), "a restarted sidecar went back to an older table"

        publisher.publish(table(3, "127.1.0.3"))
        eventually(lambda: in_force() == (3, "127.1.0.3"), timeout=30, what="version 3 in force")
        # A table recreated from scratch (its versions start again) was written later than version 3: taken.
        publisher.publish(table(1, "127.1.0.4"))
        eventually(lambda: in_force() == (1, "127.1.0.4"), timeout=30, what="the recreated table in force")
    finally:
        sidecar.terminate()
        sidecar.wait(10)
    assert "from before this start" in (tmp_path / "sidecar.log").read_text()
