"""Automatic failover and planned switchover, by the running operator, against real agents and real Dovecot.

The control plane is real and the pods are KWOK's; in each pod's place runs
the agent the image runs, with real Dovecot, bound to the pod's (loopback) IP
and configured from the shard's own ConfigMap and Secret
(`mailshard_harness.local_agents`). The operator finds and polls the agents
exactly as in a cluster: at `<pod IP>:8080`, with the token from the Secret.

A killed master's pod still looks Ready to Kubernetes here (KWOK does not
know the process died), which is the hard case on purpose: detection must
come from the agents' heartbeats, never from pod or node status.
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from operator_support import OperatorProcess, eventually, kubectl
from pair_support import SHARD, A, B, condition, events, route, set_pod_ready, shard, status
from routing_support import describe, routed_member_watch, table_watch

from mailshard.api.routing import RoutingTable, ShardState
from mailshard.builders.names import pod_name
from mailshard.proxy.render import Endpoint
from mailshard_harness import local_agents, local_proxy, mailflow
from mailshard_harness.local_proxy import LocalProxy
from mailshard_harness.testing import Samples, sample, scrape

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("operator")]


def test_a_killed_master_is_replaced_and_comes_back_as_replica(
    api_client: client.ApiClient, namespace: str, pair: local_agents.LocalPair, operator: OperatorProcess
) -> None:
    assert route(api_client, namespace).master == A
    assert operator.metrics_url is not None
    # The operator serves the whole session: its histogram counts other tests' failovers too, hence the difference.
    durations_before = sample(scrape(operator.metrics_url), "mailshard_failover_duration_seconds_count") or 0
    killed = time.monotonic()
    pair.members[A].kill()

    done = eventually(lambda: status(api_client, namespace).get("lastFailover"), timeout=30, what="a recorded failover")
    elapsed = time.monotonic() - killed
    print(f"master killed -> failover recorded: {elapsed:.1f}s")
    assert (done["from"], done["to"]) == (A, B)
    assert done["durationSeconds"] < 15
    current = status(api_client, namespace)
    assert current["master"] == B
    assert "failover" not in current
    assert "targetMaster" not in current
    row = eventually(
        lambda: (r := route(api_client, namespace)).master == B and r.state is ShardState.SERVING and r,
        timeout=10,
        what="routing repointed at the new master",
    )
    assert row.master_host.startswith(f"{B}-0.")

    def role_labels() -> dict[str, str]:
        return {
            p.metadata.name: p.metadata.labels.get("mailshard.io/role")
            for p in client.CoreV1Api(api_client).list_namespaced_pod(namespace).items
        }

    # The shard's reconcile relabels the pods from the new status; one already running goes round once more.
    eventually(
        lambda: (labels := role_labels())[f"{B}-0"] == "master" and labels[f"{A}-0"] == "replica",
        timeout=10,
        what="the pods' role labels following the new master",
    )
    seen = events(api_client, namespace)
    assert "Warning/MasterDown" in seen
    assert "Warning/StartFailover" in seen
    assert "Normal/FailoverCompleted" in seen

    # The old master returns with its role file still saying master: it must end up a replica of B.
    pair.members[A].start()
    eventually(
        lambda: (
            {m["name"]: m["role"] for m in status(api_client, namespace).get("members", [])}
            == {A: "replica", B: "master"}
        ),
        timeout=60,
        what="the old master rejoined as replica",
    )
    assert route(api_client, namespace).master == B
    assert status(api_client, namespace)["master"] == B

    # What Prometheus sees of it: the failover counted by reason, its duration observed, the pair's lag again.
    def lag_reported() -> Samples | None:
        samples = scrape(operator.metrics_url or "")
        return (
            samples
            if sample(samples, "mailshard_replication_lag_seconds", namespace=namespace, shard=SHARD) is not None
            else None
        )

    samples = eventually(lag_reported, timeout=30, what="a replication lag series for the shard")
    failovers = sample(samples, "mailshard_failovers_total", namespace=namespace, shard=SHARD, reason="MasterDown")
    assert failovers == 1
    assert sample(samples, "mailshard_failovers_total", namespace=namespace, shard=SHARD, reason="Switchover") is None
    assert (sample(samples, "mailshard_failover_duration_seconds_count") or 0) >= durations_before + 1
    lag = sample(samples, "mailshard_replication_lag_seconds", namespace=namespace, shard=SHARD)
    assert lag is not None
    assert 0 <= lag < 60


@pytest.mark.parametrize("pair", [False], indirect=True, ids=["failover-disabled"])
def test_with_failover_disabled_it_reports_and_never_promotes(
    api_client: client.ApiClient, namespace: str, pair: local_agents.LocalPair
) -> None:
    pair.members[A].kill()
    stalled = eventually(
        lambda: (c := condition(api_client, namespace, "Stalled")).get("status") == "True" and c,
        timeout=20,
        what="a Stalled condition",
    )
    assert "failover is disabled" in stalled["message"]
    time.sleep(3)
    current = status(api_client, namespace)
    assert current["master"] == A
    assert "failover" not in current
    assert "lastFailover" not in current
    assert "Warning/MasterDown" in events(api_client, namespace)


def test_a_planned_switchover_moves_the_master_and_a_bad_request_is_refused(
    api_client: client.ApiClient,
    kubeconfig: Path,
    namespace: str,
    pair: local_agents.LocalPair,
    operator: OperatorProcess,
) -> None:
    annotation = "mailshard.io/switchover-to"
    kubectl(kubeconfig, "annotate", "-n", namespace, "mailshard", SHARD, f"{annotation}=nobody-x")
    eventually(
        lambda: annotation not in (shard(api_client, namespace)["metadata"].get("annotations") or {}),
        timeout=15,
        what="the bad request answered and removed",
    )
    assert "Warning/RejectSwitchover" in events(api_client, namespace)
    assert status(api_client, namespace)["master"] == A

    kubectl(kubeconfig, "annotate", "-n", namespace, "mailshard", SHARD, f"{annotation}={B}")
    done = eventually(
        lambda: status(api_client, namespace).get("lastFailover"), timeout=60, what="the switchover recorded"
    )
    assert (done["from"], done["to"]) == (A, B)
    assert status(api_client, namespace)["master"] == B
    assert annotation not in (shard(api_client, namespace)["metadata"].get("annotations") or {})
    assert "Normal/SwitchoverCompleted" in events(api_client, namespace)
    samples = scrape(operator.metrics_url or "")
    assert sample(samples, "mailshard_failovers_total", namespace=namespace, shard=SHARD, reason="Switchover") == 1
    assert sample(samples, "mailshard_failovers_total", namespace=namespace, shard=SHARD, reason="MasterDown") is None
    eventually(
        lambda: (
            {m["name"]: m["role"] for m in status(api_client, namespace).get("members", [])}
            == {A: "replica", B: "master"}
        ),
        timeout=30,
        what="the old master demoted to replica",
    )
    assert route(api_client, namespace).master == B


def test_the_operator_killed_mid_failover_resumes_it(
    api_client: client.ApiClient, namespace: str, pair: local_agents.LocalPair, operator: OperatorProcess
) -> None:
    pair.members[A].kill()
    eventually(lambda: status(api_client, namespace).get("failover"), timeout=30, what="a failover under way")
    operator.kill()
    try:
        time.sleep(1)
    finally:
        operator.start()
    done = eventually(
        lambda: status(api_client, namespace).get("lastFailover"), timeout=60, what="the failover resumed and done"
    )
    assert (done["from"], done["to"]) == (A, B)
    assert status(api_client, namespace)["master"] == B
    assert route(api_client, namespace).master == B


def test_both_members_down_is_reported_and_never_promotes(
    api_client: client.ApiClient, namespace: str, pair: local_agents.LocalPair
) -> None:
    local_agents.kill_together(pair.members[A], pair.members[B])
    for member in (A, B):  # what the kubelet does once the agents' readiness probes fail
        set_pod_ready(api_client, namespace, f"{member}-0", ready=False)
    stalled = eventually(
        lambda: (c := condition(api_client, namespace, "Stalled")).get("status") == "True" and c,
        timeout=20,
        what="a Stalled condition",
    )
    assert stalled["reason"] == "BothDown", stalled
    assert "no member can serve" in stalled["message"]
    time.sleep(3)  # several more decisions: none may promote
    current = status(api_client, namespace)
    assert current["master"] == A
    assert "failover" not in current
    assert "lastFailover" not in current
    assert "Warning/BothDown" in events(api_client, namespace)

    # The master comes back: the alarm clears and it is still the master; nothing moved meanwhile.
    pair.members[A].start()
    pair.members[B].start()
    for member in (A, B):
        set_pod_ready(api_client, namespace, f"{member}-0", ready=True)
    eventually(
        lambda: condition(api_client, namespace, "Stalled").get("status") in (None, "False"),
        timeout=60,
        what="the alarm cleared",
    )
    assert status(api_client, namespace)["master"] == A
    assert "lastFailover" not in status(api_client, namespace)


def test_both_agents_silent_while_kubernetes_says_ready_is_uncertain_and_never_promotes(
    api_client: client.ApiClient, namespace: str, pair: local_agents.LocalPair
) -> None:
    """From the operator's side this may be a partition, not a crash: it waits, then asks a human."""
    local_agents.kill_together(pair.members[A], pair.members[B])
    stalled = eventually(
        lambda: (c := condition(api_client, namespace, "Stalled")).get("status") == "True" and c,
        timeout=45,
        what="a Stalled condition once the uncertainty lasted 30 s",
    )
    assert stalled["reason"] == "Uncertain", stalled
    current = status(api_client, namespace)
    assert current["master"] == A
    assert "failover" not in current
    assert "lastFailover" not in current


def _set_node_ready(api: client.ApiClient, node: str, ready: bool) -> None:
    core = client.CoreV1Api(api)
    current = core.read_node_status(node)
    conditions = []
    for item in current.status.conditions or []:
        if item.type == "Ready":
            item.status = "True" if ready else "False"
            item.reason = "KubeletReady" if ready else "NodeStatusUnknown"
            item.message = "set by the test" if not ready else "kubelet is posting ready status"
        conditions.append(item)
    core.patch_node_status(node, {"status": {"conditions": [api.sanitize_for_serialization(c) for c in conditions]}})


def test_a_master_on_a_node_gone_not_ready_is_replaced_without_waiting_for_the_node_grace_period(
    api_client: client.ApiClient, namespace: str, pair: local_agents.LocalPair
) -> None:
    core = client.CoreV1Api(api_client)
    node = core.read_namespaced_pod(f"{A}-0", namespace).spec.node_name
    assert node
    lost = time.monotonic()
    pair.members[A].kill()
    _set_node_ready(api_client, node, ready=False)
    try:
        done = eventually(
            lambda: status(api_client, namespace).get("lastFailover"), timeout=30, what="a recorded failover"
        )
        elapsed = time.monotonic() - lost
        print(f"node NotReady and master dead -> failover recorded: {elapsed:.1f}s")
        assert (done["from"], done["to"]) == (A, B)
        # The node lifecycle controller would mark the pod NotReady only after its grace period (40 s by default).
        assert elapsed < 40
        row = eventually(
            lambda: (r := route(api_client, namespace)).master == B and r.state is ShardState.SERVING and r,
            timeout=10,
            what="routing repointed at the new master",
        )
        assert row.master == B
    finally:
        _set_node_ready(api_client, node, ready=True)


KILLS_WITH_OPERATOR = int(os.environ.get("MAILSHARD_DRILL_KILLS", "3"))
"""3 in the suite; `bench/failover_latency.py` runs this test with 100 and reads the DRILL-RESULT line it prints."""


@pytest.fixture
def proxy(
    pair: local_agents.LocalPair, kubeconfig: Path, namespace: str, request: pytest.FixtureRequest
) -> Iterator[LocalProxy]:
    """The real proxy, its routing sidecar following `demo-routing` through the API, the members at their pod IPs."""
    problem = local_proxy.missing()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{problem}: CI must run .ci/install-mail-deps first")
        pytest.skip(problem)

    def resolve(host: str) -> Endpoint:
        member = next(name for name in pair.members if host.startswith(f"{pod_name(name)}."))
        ports = local_agents.LOCAL_MAIL_PORTS
        return Endpoint(pair.members[member].ip, ports["imap"], ports["pop3"], ports["lmtp"], ports["managesieve"])

    root = Path(tempfile.mkdtemp(prefix="ms-p-"))
    started = LocalProxy.start(root)
    started.follow(cluster="demo", namespace=namespace, kubeconfig=kubeconfig, resolve=resolve)
    try:
        yield started
    finally:
        started.stop()
        request.node.add_report_section("teardown", "proxy log", started.log_tail())
        shutil.rmtree(root, ignore_errors=True)


def _login(proxy: LocalProxy, user: str, password: str) -> bool:
    try:
        client_ = imaplib.IMAP4("127.0.0.1", proxy.ports["imap"], timeout=10)
    except OSError:
        return False
    try:
        client_.login(user, password)
    except imaplib.IMAP4.error:
        return False
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            client_.logout()
    return True


def test_mail_through_the_proxy_survives_master_kills_with_nothing_lost(
    api_client: client.ApiClient, namespace: str, pair: local_agents.LocalPair, proxy: LocalProxy
) -> None:
    """The whole path, repeatedly: operator, routing table, sidecar, proxy, journal, agents, Dovecot."""
    users = sorted(pair.users)
    user, password = users[0], pair.users[users[0]]
    eventually(lambda: _login(proxy, user, password), timeout=20, what="a first login through the proxy")
    acked: list[mailflow.Sent] = []
    unacked: list[mailflow.Sent] = []
    outages: list[float] = []
    recorded_after: list[float] = []
    master, replica = A, B
    for kill in range(KILLS_WITH_OPERATOR):
        stream = mailflow.Stream("127.0.0.1", proxy.ports["lmtp"], users, f"op{kill}").start()
        stream.wait_for(40)
        previous = status(api_client, namespace).get("lastFailover")
        pair.members[master].kill()
        killed = time.monotonic()
        stream.stop()
        acked += stream.acked
        unacked += stream.unacked

        # Logins are tried from the kill on (not only once the failover is recorded), so the outage is what a
        # client sees: it ends with the first login the new master serves.
        eventually(lambda: _login(proxy, user, password), timeout=30, what="a login through the proxy")
        outages.append(time.monotonic() - killed)

        def recorded(previous: Any = previous) -> Any:
            latest = status(api_client, namespace).get("lastFailover")
            return latest if latest != previous else None

        done = eventually(recorded, timeout=30, what=f"failover {kill} recorded")
        recorded_after.append(time.monotonic() - killed)
        assert (done["from"], done["to"]) == (master, replica)
        pair.members[master].start()

        def swapped(master: str = master, replica: str = replica) -> bool:
            roles = {m["name"]: m["role"] for m in status(api_client, namespace).get("members", [])}
            return roles == {master: "replica", replica: "master"}

        eventually(swapped, timeout=60, what="the old master back as replica")
        eventually(
            lambda: condition(api_client, namespace, "Replicating").get("status") == "True",
            timeout=60,
            what="the pair in sync again",
        )
        master, replica = replica, master

    conf = pair.members[master].data_dir / "conf" / "dovecot.conf"
    assert mailflow.losses(mailflow.held(conf, users), acked, unacked) == []
    result = {
        "kills": KILLS_WITH_OPERATOR,
        "acknowledged": len(acked),
        "lost_or_duplicated": 0,
        "kill_to_failover_recorded_seconds": [round(value, 3) for value in recorded_after],
        "kill_to_login_through_proxy_seconds": [round(value, 3) for value in outages],
    }
    print(f"\nDRILL-RESULT {json.dumps(result)}")


ROUTE_SWITCHOVERS = int(os.environ.get("MAILSHARD_ROUTE_SWITCHOVERS", "2"))
"""2 in the suite; `bench/route_propagation.py` runs this test with more and reads the ROUTE-RESULT line it prints."""
ROUTE_BOUND = 3.0
"""Seconds from the status change to the first login on the new master allowed here; the target is 1 s."""


def _serves(member: str, table: RoutingTable) -> bool:
    return table.shards[SHARD].master == member and table.shards[SHARD].state is ShardState.SERVING


def _switched(api: client.ApiClient, namespace: str, previous: Any, old: str, new: str) -> bool:
    """The switchover recorded, and the old master back as the new one's replica."""
    current = status(api, namespace)
    roles = {m["name"]: m["role"] for m in current.get("members", [])}
    return current.get("lastFailover") != previous and roles == {old: "replica", new: "master"}


class LoginProbe:
    """Starts a login through the proxy every `INTERVAL` s; records when each landed and on which member.

    Logins overlap: a refused one (the shard fenced mid-switchover) takes Dovecot's auth failure delay of
    about 2 s to answer, and a probe waiting for it would miss the moment the route moves. The member is the
    one whose address the proxy's own session table (`doveadm proxy list`) shows, read while the session is open.
    """

    INTERVAL = 0.05

    def __init__(self, proxy: LocalProxy, pair: local_agents.LocalPair, user: str) -> None:
        self.proxy, self.user, self.password = proxy, user, pair.users[user]
        self.members = {member.ip: name for name, member in pair.members.items()}
        self.landed: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="login-probe")
        self._thread = threading.Thread(target=self._run, name="login-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            self._pool.submit(self._attempt)

    def _attempt(self) -> None:
        try:
            session = imaplib.IMAP4("127.0.0.1", self.proxy.ports["imap"], timeout=10)
        except OSError:
            return
        try:
            session.login(self.user, self.password)
            logged_in = time.monotonic()
            self.landed.append((logged_in, self._member()))
        except subprocess.SubprocessError as error:
            self.landed.append((time.monotonic(), f"doveadm failed: {error}"))
        except imaplib.IMAP4.error:
            pass  # refused while the shard is fenced
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                session.logout()

    def _member(self) -> str:
        rows = [line.split("\t") for line in self.proxy.doveadm(["-f", "tab", "proxy", "list"]).splitlines()]
        header = rows[0] if rows else []
        column = next((i for i, name in enumerate(header) if name.replace("-", " ") == "dest ip"), None)
        found = {row[column] for row in rows[1:] if column is not None and row[0] == self.user and len(row) > column}
        return ",".join(sorted(self.members.get(ip, ip) for ip in found)) or "unknown"

    def since(self, moment: float) -> list[tuple[float, str]]:
        return sorted((at, served) for at, served in list(self.landed) if at >= moment)

    def first_on(self, member: str, *, since: float, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((at for at, served in self.since(since) if served == member), None)
            if found is not None:
                return found
            time.sleep(0.01)
        return None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pool.shutdown(wait=True, cancel_futures=True)


def test_a_switchover_reaches_the_first_login_through_the_proxy_on_the_new_master(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str, pair: local_agents.LocalPair, proxy: LocalProxy
) -> None:
    """Route propagation, all real but the pods: the operator's status change → table → sidecar → login.

    Each planned switchover is timed at three points, from the moment the shard's status first routes its
    users to the new master (a watch on the MailShard): the new table version at a watch on the ConfigMap,
    and the first login through the proxy that the proxy connected to the new master.
    """
    user = sorted(pair.users)[0]
    eventually(lambda: _login(proxy, user, pair.users[user]), timeout=20, what="a first login through the proxy")
    routed = routed_member_watch(kubeconfig, namespace, SHARD)
    tables = table_watch(kubeconfig, namespace, "demo-routing")
    probe = LoginProbe(proxy, pair, user)
    figures: dict[str, list[float]] = {"request_to_status": [], "status_to_table": [], "status_to_login": []}
    master = A
    try:
        for switchover in range(ROUTE_SWITCHOVERS):
            target = B if master == A else A
            previous = status(api_client, namespace).get("lastFailover")
            requested = time.monotonic()
            kubectl(kubeconfig, "annotate", "-n", namespace, "mailshard", SHARD, f"mailshard.io/switchover-to={target}")
            _, moved = routed.wait_for(target.__eq__, since=requested, timeout=60, what="a new master")
            _, published = tables.wait_for(partial(_serves, target), since=requested, timeout=60, what="a new table")
            landed = probe.first_on(target, since=moved, timeout=ROUTE_BOUND)
            assert landed is not None, (
                f"switchover {switchover}: no login on {target} within {ROUTE_BOUND} s (missed); "
                f"logins since the status change: {[(round(at - moved, 3), on) for at, on in probe.since(moved)]}"
            )
            assert not [at for at, served in probe.landed if served == target and requested <= at < moved], (
                f"switchover {switchover}: a login reached {target} before the status routed to it"
            )
            figures["request_to_status"].append(moved - requested)
            figures["status_to_table"].append(published - moved)
            figures["status_to_login"].append(landed - moved)
            eventually(partial(_switched, api_client, namespace, previous, master, target), timeout=60, what="done")
            eventually(
                lambda: condition(api_client, namespace, "Replicating").get("status") == "True",
                timeout=60,
                what="the pair in sync again",
            )
            master = target
    finally:
        probe.stop()
        routed.stop()
        tables.stop()
    for name, values in figures.items():
        print(f"\nswitchover, {name.replace('_to_', ' -> ').replace('_', ' ')}: {describe(values)}")
    print(f"ROUTE-RESULT {json.dumps({name: [round(v, 4) for v in values] for name, values in figures.items()})}")
    assert statistics.median(figures["status_to_login"]) < 1.0, describe(figures["status_to_login"])
