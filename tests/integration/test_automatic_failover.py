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
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from operator_support import OperatorProcess, eventually, kubectl
from pair_support import SHARD, A, B, condition, events, route, set_pod_ready, shard, status

from mailshard.api.routing import ShardState
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
    labels = {
        p.metadata.name: p.metadata.labels.get("mailshard.io/role")
        for p in client.CoreV1Api(api_client).list_namespaced_pod(namespace).items
    }
    assert labels[f"{B}-0"] == "master"
    assert labels[f"{A}-0"] == "replica"
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

        def recorded(previous: Any = previous) -> Any:
            latest = status(api_client, namespace).get("lastFailover")
            return latest if latest != previous else None

        done = eventually(recorded, timeout=30, what=f"failover {kill} recorded")
        recorded_after.append(time.monotonic() - killed)
        assert (done["from"], done["to"]) == (master, replica)
        eventually(lambda: _login(proxy, user, password), timeout=10, what="a login through the proxy")
        outages.append(time.monotonic() - killed)
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
