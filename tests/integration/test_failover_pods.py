"""Failover drills about the master's pod and what comes back after it, with real agents and real Dovecot.

As in `test_automatic_failover`, the control plane is real, the pods are
KWOK's, and the agent the image runs stands in each pod's place at its IP
(`mailshard_harness.local_agents`). These drills cover what happens to the
pod, not just to the process in it:

- the master's pod deleted: the StatefulSet recreates it, and it comes back
  as the replica;
- only the master's pod made NotReady (its agent stopped answering and the
  kubelet noticed): a failover without any word from the replica;
- an old master that could not be told to fence itself, back later while it
  cannot reach its peer either: the shard's contract (`status.superseded`
  carried in `shard.json`) keeps it from ever serving as master;
- a replica too far behind to promote: a Stalled condition and a Warning
  Event saying what a human can do, then the human's forced promotion.

After each failover the shard must stay Degraded, never Ready and never
Stalled for the catch-up, until the member left behind is seen in sync as the
new replica (`lastFailover.replicaInSyncAt`), and be Healthy after that.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from operator_support import eventually, kubectl
from pair_support import SHARD, A, B, condition, route, set_pod_ready, shard, status

from mailshard.api.constants import SHARD_CONFIG_KEY
from mailshard.api.routing import ShardState
from mailshard.api.runtime import ShardRuntimeConfig
from mailshard.builders.names import config_map_name, pod_name
from mailshard_harness import local_agents, mailflow

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("operator")]

FORCE = "mailshard.io/force-promote"
NOWHERE = "127.255.255.254"
"""A loopback address nothing listens on: a member told its peer is there cannot reach it (refused at once)."""


def _events(api: client.ApiClient, namespace: str) -> list[tuple[str, str, str]]:
    return [
        (e.type, e.reason, e.message or "")
        for e in client.CoreV1Api(api).list_namespaced_event(namespace).items
        if e.involved_object.name == SHARD
    ]


def _roles(api: client.ApiClient, namespace: str) -> dict[str, str]:
    return {m["name"]: m["role"] for m in status(api, namespace).get("members", [])}


def _failover_recorded(api: client.ApiClient, namespace: str, *, timeout: float = 30) -> dict[str, Any]:
    done: dict[str, Any] = eventually(
        lambda: status(api, namespace).get("lastFailover"), timeout=timeout, what="a recorded failover"
    )
    return done


def _routed_to(api: client.ApiClient, namespace: str, member: str) -> None:
    eventually(
        lambda: (r := route(api, namespace)).master == member and r.state is ShardState.SERVING,
        timeout=10,
        what=f"routing pointed at {member} and serving",
    )


def _contract(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    """The shard.json both members mount, as the operator last wrote it."""
    config_map = client.CoreV1Api(api).read_namespaced_config_map(config_map_name(SHARD), namespace)
    document: dict[str, Any] = json.loads((config_map.data or {})[SHARD_CONFIG_KEY])
    return document


def _conditions(api: client.ApiClient, namespace: str) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status(api, namespace).get("conditions", [])}


def _until_whole_again(api: client.ApiClient, namespace: str, *, old: str, new: str, timeout: float = 90) -> None:
    """Watch the catch-up: Degraded and never Ready nor Stalled until the old master is seen in sync, then Healthy.

    Every status read on the way is checked, not just the last one.
    """
    deadline = time.monotonic() + timeout
    seen: list[tuple[str | None, str, str, str, str, bool]] = []
    while time.monotonic() < deadline:
        current = status(api, namespace)
        conditions = {c["type"]: c for c in current.get("conditions", [])}
        in_sync_at = (current.get("lastFailover") or {}).get("replicaInSyncAt")
        ready, degraded, stalled = (conditions[k]["status"] for k in ("Ready", "Degraded", "Stalled"))
        reason = conditions["Ready"]["reason"]
        seen.append((current.get("phase"), reason, ready, degraded, stalled, in_sync_at is not None))
        assert stalled == "False", f"a normal catch-up is never Stalled: {conditions['Stalled']}"
        if in_sync_at is None:
            assert (ready, degraded) == ("False", "True"), f"whole again before {old} was seen in sync: {seen}"
        if current.get("phase") == "Healthy":
            assert in_sync_at is not None
            assert _roles(api, namespace) == {old: "replica", new: "master"}
            assert degraded == "False"
            became_ready = datetime.fromisoformat(conditions["Ready"]["lastTransitionTime"])
            assert became_ready >= datetime.fromisoformat(in_sync_at).replace(microsecond=0)
            print(f"catch-up seen as (phase, why, Ready, Degraded, Stalled, in sync noted): {sorted(set(seen))}")
            return
        time.sleep(0.2)
    pytest.fail(f"{old} never caught up as replica within {timeout:.0f}s: {seen[-5:]}")


def _degraded_while_away(api: client.ApiClient, namespace: str, away: str) -> None:
    conditions = _conditions(api, namespace)
    assert conditions["Degraded"]["status"] == "True", conditions["Degraded"]
    assert conditions["Ready"]["status"] == "False", conditions["Ready"]
    assert conditions["Stalled"]["status"] == "False", conditions["Stalled"]
    assert away in conditions["Ready"]["message"] or "failover" in conditions["Ready"]["message"]


def test_a_deleted_master_pod_is_replaced_and_its_recreated_pod_comes_back_as_replica(
    api_client: client.ApiClient, namespace: str, pair: local_agents.LocalPair
) -> None:
    core = client.CoreV1Api(api_client)
    old_pod = core.read_namespaced_pod(pod_name(A), namespace)
    core.delete_namespaced_pod(pod_name(A), namespace)
    pair.members[A].kill()  # the kubelet stops the containers of a deleted pod

    done = _failover_recorded(api_client, namespace)
    assert (done["from"], done["to"], done["cause"]) == (A, B, "MasterDown")
    assert status(api_client, namespace)["master"] == B
    _routed_to(api_client, namespace, B)
    assert "replicaInSyncAt" not in done

    def recreated() -> Any:
        pod = core.read_namespaced_pod(pod_name(A), namespace)
        fresh = pod.metadata.uid != old_pod.metadata.uid and pod.status.pod_ip and not pod.metadata.deletion_timestamp
        return pod if fresh else None

    pod = eventually(recreated, timeout=60, what="the StatefulSet's new pod for the old master, with an IP")
    assert pod.metadata.labels["mailshard.io/role"] == "replica", "a recreated pod starts with the role decided"
    assert pod.spec.node_name == old_pod.spec.node_name, "its volume keeps it on its node"
    _degraded_while_away(api_client, namespace, A)
    print(f"old master pod IP {old_pod.status.pod_ip}, recreated at {pod.status.pod_ip}")

    local_agents.restart_from_contract(api_client, namespace, pair, A)
    _until_whole_again(api_client, namespace, old=A, new=B)
    assert route(api_client, namespace).master == B
    assert "superseded" not in status(api_client, namespace)
    assert "superseded" not in _contract(api_client, namespace)


def test_a_master_pod_gone_not_ready_alone_is_replaced(
    api_client: client.ApiClient, namespace: str, pair: local_agents.LocalPair
) -> None:
    """Its agent stopped answering and the kubelet marked the pod NotReady: no need for the replica's word."""
    pair.members[A].kill()
    set_pod_ready(api_client, namespace, pod_name(A), ready=False)

    done = _failover_recorded(api_client, namespace)
    assert (done["from"], done["to"], done["cause"]) == (A, B, "MasterDown")
    assert "its pod is not ready" in done["reason"], done["reason"]
    assert "replica's agent" not in done["reason"], "the pod's readiness sufficed; the replica was not needed"
    _routed_to(api_client, namespace, B)
    assert status(api_client, namespace)["superseded"] == [A], "it could not be told, so the contract tells it"
    assert _contract(api_client, namespace)["superseded"] == [A]
    _degraded_while_away(api_client, namespace, A)

    # The kubelet restarts the container in the same pod: it reads the contract and starts fenced.
    local_agents.restart_from_contract(api_client, namespace, pair, A)
    set_pod_ready(api_client, namespace, pod_name(A), ready=True)
    _until_whole_again(api_client, namespace, old=A, new=B)
    assert route(api_client, namespace).master == B
    assert "superseded" not in _contract(api_client, namespace)


def test_an_old_master_that_could_not_be_fenced_never_serves_as_master_even_cut_off_from_its_peer(
    api_client: client.ApiClient, namespace: str, pair: local_agents.LocalPair
) -> None:
    """Without the contract it would start as master: its role file says so and its peer cannot say otherwise."""
    pair.members[A].kill()
    done = _failover_recorded(api_client, namespace)
    assert (done["from"], done["to"]) == (A, B)
    assert status(api_client, namespace)["superseded"] == [A]
    assert _contract(api_client, namespace)["superseded"] == [A]
    assert (pair.members[A].data_dir / "role").read_text().strip() == "master", "nobody could tell it otherwise"

    local_agents.restart_from_contract(api_client, namespace, pair, A, peer_host=NOWHERE)
    answers: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(answers) < 10:
        answer = pair.members[A].agent_status()
        if answer is not None:
            answers.append(answer)
        time.sleep(0.3)
    assert answers, f"the old master's agent never answered:\n{pair.members[A].log_tail()}"
    for answer in answers:
        assert answer["fenced"] or answer["role"] != "master", answer
        assert not answer.get("readyAsMaster"), answer
    assert answers[0]["fenced"], "fenced from its very first answer, before anyone told it"
    assert "the shard's contract says a failover superseded this master" in pair.members[A].log_tail(200)
    # The operator demotes it, but cannot re-seed it while it cannot reach the master: it stays listed, and the
    # failing call is told in an Event, not only in the operator's log.
    failed = eventually(
        lambda: [message for _, reason, message in _events(api_client, namespace) if reason == "AgentCallFailed"],
        timeout=30,
        what="an AgentCallFailed Event",
    )
    assert any(A in message and "retrying" in message for message in failed), failed
    assert status(api_client, namespace)["master"] == B
    assert status(api_client, namespace)["superseded"] == [A]

    # The partition heals (its peer is where it should be): it is re-seeded and taken off the list.
    pair.members[A].stop()
    local_agents.restart_from_contract(api_client, namespace, pair, A)
    _until_whole_again(api_client, namespace, old=A, new=B)
    eventually(lambda: "superseded" not in _contract(api_client, namespace), timeout=10, what="the contract cleared")
    assert route(api_client, namespace).master == B


def _slow_to_promote(kubeconfig: Path, namespace: str) -> None:
    """A lag bound of 3 s and a delay of 4 s."""
    patch = {"spec": {"replication": {"maxLagSeconds": 3}, "failover": {"delaySeconds": 4}}}
    kubectl(kubeconfig, "patch", "-n", namespace, "mailshard", SHARD, "--type=merge", "-p", json.dumps(patch))


@contextlib.contextmanager
def _replication_cut(member: local_agents.LocalMember, port: int) -> Iterator[None]:
    """Refuses every connection to `member`'s replication listener (its doveadm server): the master's dsync cannot
    reach it, while both agents still answer and report, so the replica's lag grows as it would in a real
    partition of the replication link. Refused rather than dropped, so that nobody waits on a timeout."""
    if shutil.which("iptables") is None:
        pytest.fail("iptables is needed to cut the replication link: .ci/install-mail-deps installs it")
    rule = ["INPUT", "-d", f"{member.ip}/32", "-p", "tcp", "--dport", str(port), "-j", "REJECT"]
    subprocess.run(["iptables", "-w", "-I", *rule, "--reject-with", "tcp-reset"], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-w", "-D", *rule, "--reject-with", "tcp-reset"], check=False)


def test_a_replica_too_far_behind_is_not_promoted_a_human_is_told_what_to_do_and_can_force_it(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str, pair: local_agents.LocalPair
) -> None:
    """The replication link is cut while the master takes mail, and the master dies once the replica is 3 s
    behind by its own count: it lacks mail the master acknowledged, so promoting it is a human's call."""
    _slow_to_promote(kubeconfig, namespace)
    eventually(
        lambda: (
            condition(api_client, namespace, "Stalled").get("status") == "False"
            and condition(api_client, namespace, "Replicating").get("status") == "True"
        ),
        what="the pair healthy under the tighter lag bound",
    )
    port = ShardRuntimeConfig.model_validate(_contract(api_client, namespace)).ports.replication
    with _replication_cut(pair.members[B], port):
        users = sorted(pair.users)
        stream = mailflow.Stream(pair.members[A].ip, local_agents.LOCAL_MAIL_PORTS["lmtp"], users, "unreplicated")
        stream.start().wait_for(len(users))
        stream.stop()

        def replica_lag() -> float:
            lag = ((pair.members[B].agent_status() or {}).get("replication") or {}).get("lagSeconds")
            return float(lag) if lag is not None else 0.0

        eventually(lambda: replica_lag() > 3.5, timeout=30, what="the replica's own lag past the 3 s bound")
        eventually(
            lambda: (status(api_client, namespace).get("lagSeconds") or 0) > 3,
            timeout=10,
            what="the operator shown that lag",
        )
        pair.members[A].kill()

        def alarm() -> Any:
            stalled = condition(api_client, namespace, "Stalled")
            return stalled if stalled.get("status") == "True" and FORCE in stalled.get("message", "") else None

        stalled: dict[str, Any] = eventually(alarm, timeout=30, what="a Stalled condition telling a human what to do")
    assert stalled["reason"] == "MasterDown", stalled
    message = stalled["message"]
    assert "not promoting dovecot-1-b" in message
    assert "more than the 3s allowed (maxLagSeconds)" in message
    assert f"bring {A} back" in message
    assert f"{FORCE}={B}" in message
    warnings = [m for kind, reason, m in _events(api_client, namespace) if kind == "Warning" and FORCE in m]
    assert warnings, "the alarm is also a Warning Event"
    time.sleep(3)  # more decisions: none may promote
    current = status(api_client, namespace)
    assert current["master"] == A
    assert "failover" not in current
    assert "lastFailover" not in current

    kubectl(kubeconfig, "annotate", "-n", namespace, "mailshard", SHARD, f"{FORCE}={B}")
    done = _failover_recorded(api_client, namespace)
    assert (done["from"], done["to"], done["cause"]) == (A, B, "ForcedPromotion")
    assert isinstance(done.get("messagesAtRisk"), int), done
    assert "a human accepted losing" in done["reason"]
    _routed_to(api_client, namespace, B)
    eventually(
        lambda: FORCE not in (shard(api_client, namespace)["metadata"].get("annotations") or {}),
        timeout=10,
        what="the request answered and removed",
    )
    reasons = {(kind, reason) for kind, reason, _ in _events(api_client, namespace)}
    assert ("Warning", "ForcePromotion") in reasons
    assert ("Normal", "ForcedPromotionCompleted") in reasons
    eventually(
        lambda: condition(api_client, namespace, "Stalled").get("status") == "False",
        timeout=10,
        what="the alarm cleared",
    )

    local_agents.restart_from_contract(api_client, namespace, pair, A)
    _until_whole_again(api_client, namespace, old=A, new=B)
