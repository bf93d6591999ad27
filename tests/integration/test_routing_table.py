"""The operator, running for real, publishes each cluster's routing table and keeps it true within a second.

Timing target (issue 5): a change of a shard's status (a new master, fenced or
unfenced) shows up as a new table version within 1 s.
`test_thirty_shard_status_changes_each_reach_the_table` makes 30 such changes
and times each one from its API write to the new version arriving at a watch
on the ConfigMap. It asserts the target on the median and, because this runs
on a 2-core machine shared with the rest of the suite (the operator, the
control plane and other tests' daemons), holds each single change only to
`GENEROUS_BOUND` (3 s); it prints p50, p99, max and how many took over 1 s.
The median is also what tells the watch-driven path from the operator's 3 s
resync timer here, which alone would give a median near 1.5 s. The other tests
wait for a new version at most `GENEROUS_BOUND` too.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from operator_support import OPERATOR_USER, REPO, AuditLog, OperatorProcess, eventually, kubectl
from routing_support import describe, table_watch

from mailshard.api.constants import ANNOTATION_FENCED
from mailshard.api.routing import TABLE_KEY, RoutingTable, ShardState, parse_table, render_table

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("operator")]

GROUP, VERSION = "mailshard.io", "v1alpha1"
TABLE = "demo-routing"
GENEROUS_BOUND = 3.0
"""Seconds any one change may take on this shared machine (see the module docstring); the target is 1 s."""


def table(api_client: client.ApiClient, namespace: str) -> RoutingTable | None:
    try:
        config_map = client.CoreV1Api(api_client).read_namespaced_config_map(TABLE, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    text = (config_map.data or {}).get(TABLE_KEY)
    return parse_table(text) if text else None


def cluster(api_client: client.ApiClient, namespace: str) -> dict[str, Any]:
    result: dict[str, Any] = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "mailclusters", "demo"
    )
    return result


def cluster_condition(api_client: client.ApiClient, namespace: str, kind: str) -> dict[str, Any] | None:
    conditions = (cluster(api_client, namespace).get("status") or {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == kind), None)


def complete_table(api_client: client.ApiClient, namespace: str) -> RoutingTable:
    """The examples' table once every slot is assigned and both shards serve."""

    def ready() -> RoutingTable | None:
        current = table(api_client, namespace)
        if current is None or None in current.slots:
            return None
        states = {name: row.state for name, row in current.shards.items()}
        return current if states == {"cyrus-1": ShardState.SERVING, "dovecot-1": ShardState.SERVING} else None

    return eventually(ready, what="a routing table with every slot assigned and both shards serving")


def apply_examples(kubeconfig: Path, namespace: str) -> None:
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(REPO / "examples"))


def wait_for_version(
    api_client: client.ApiClient, namespace: str, after: int, what: str, check: Any = None
) -> tuple[RoutingTable, float]:
    """Poll until the table's version passes `after` (and `check` holds); returns it and the seconds it took."""
    started = time.monotonic()

    def newer() -> RoutingTable | None:
        current = table(api_client, namespace)
        if current is None or current.version <= after or (check is not None and not check(current)):
            return None
        return current

    deadline = started + GENEROUS_BOUND
    while time.monotonic() < deadline:
        found = newer()
        if found is not None:
            elapsed = time.monotonic() - started
            print(f"\nrouting propagation ({what}): {elapsed * 1000:.0f} ms")
            return found, elapsed
        time.sleep(0.01)
    raise AssertionError(f"no routing table newer than version {after} with {what} within {GENEROUS_BOUND} s")


def routing_writes(audit: AuditLog, namespace: str, since: int) -> list[str]:
    return [w for w in audit.writes(user=OPERATOR_USER, namespace=namespace, since=since) if TABLE in w]


def test_the_table_is_published_complete_and_follows_a_failover_within_a_second(
    api_client: client.ApiClient,
    kubeconfig: Path,
    namespace: str,
    operator: OperatorProcess,
    audit: AuditLog,
) -> None:
    apply_examples(kubeconfig, namespace)
    before = complete_table(api_client, namespace)

    # Slots are shared by capacity: cyrus-1 inherits 2000 mailboxes, dovecot-1 sets 1000.
    assert Counter(before.slots) == {"cyrus-1": 683, "dovecot-1": 341}
    assert len(before.runs()) == 2
    for name in ("cyrus-1", "dovecot-1"):
        row = before.shards[name]
        assert row.master == f"{name}-a"
        assert row.master_host == f"{name}-a-0.{name}-a.{namespace}.svc"
        assert row.endpoint == f"{name}-master.{namespace}.svc"
    shown = yaml.safe_load(kubectl(kubeconfig, "get", "cm", TABLE, "-n", namespace, "-o", "yaml").stdout)
    assert shown["data"][TABLE_KEY] == render_table(before)
    assert shown["metadata"]["labels"]["app.kubernetes.io/component"] == "routing"
    assert shown["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mailshard-operator"
    assert shown["metadata"]["ownerReferences"][0]["kind"] == "MailCluster"
    eventually(
        lambda: cluster(api_client, namespace)["status"].get("routingVersion") == before.version,
        what="status.routingVersion",
    )
    assert cluster_condition(api_client, namespace, "Degraded")["status"] == "False"  # type: ignore[index]
    assert "SlotsAssigned" in {
        e.reason
        for e in client.CoreV1Api(api_client).list_namespaced_event(namespace).items
        if e.involved_object.name == "demo"
    }

    time.sleep(2)
    mark = audit.mark()
    # What a failover does to the status: another member is master now.
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "mailshards", "dovecot-1", {"status": {"master": "dovecot-1-b"}}
    )
    after, elapsed = wait_for_version(
        api_client, namespace, before.version, "a new master", lambda t: t.shards["dovecot-1"].master == "dovecot-1-b"
    )
    assert elapsed <= GENEROUS_BOUND
    assert after.version == before.version + 1
    assert after.slots == before.slots
    assert after.shards["cyrus-1"] == before.shards["cyrus-1"]
    assert after.shards["dovecot-1"].master_host == f"dovecot-1-b-0.dovecot-1-b.{namespace}.svc"
    assert after.shards["dovecot-1"].state is ShardState.SERVING

    # The shard reconciler now relabels the pods and rewrites the shard status; none of it changes a route.
    time.sleep(2 * operator.resync_seconds + 1)
    assert routing_writes(audit, namespace, mark) == [f"patch configmaps/{TABLE}"]
    assert table(api_client, namespace) == after
    assert cluster(api_client, namespace)["status"]["routingVersion"] == after.version


def test_thirty_shard_status_changes_each_reach_the_table(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    """20 master changes (status.master, as a failover writes it) and 5 fences and unfences, each timed."""
    apply_examples(kubeconfig, namespace)
    complete_table(api_client, namespace)
    shards = client.CustomObjectsApi(api_client)
    watch = table_watch(kubeconfig, namespace, TABLE)
    delays: list[float] = []

    def timed(change: Any, check: Any, what: str) -> None:
        started = time.monotonic()
        change()
        _table, arrived = watch.wait_for(check, since=started, timeout=GENEROUS_BOUND, what=what)
        delays.append(arrived - started)
        time.sleep(0.5)  # the shard reconciler relabels the pods and rewrites the status, as after a real failover

    try:
        for flip in range(20):
            master = "dovecot-1-b" if flip % 2 == 0 else "dovecot-1-a"
            timed(
                lambda master=master: shards.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, "mailshards", "dovecot-1", {"status": {"master": master}}
                ),
                lambda t, master=master: (
                    t.shards["dovecot-1"].master == master and t.shards["dovecot-1"].state is ShardState.SERVING
                ),
                f"dovecot-1 served by {master}",
            )
        for _ in range(5):
            for fenced, state in (("true", ShardState.FENCED), (None, ShardState.SERVING)):
                # What `kubectl mailshard fence` and `unfence` write.
                timed(
                    lambda fenced=fenced: shards.patch_namespaced_custom_object(
                        GROUP,
                        VERSION,
                        namespace,
                        "mailshards",
                        "cyrus-1",
                        {"metadata": {"annotations": {ANNOTATION_FENCED: fenced}}},
                    ),
                    lambda t, state=state: t.shards["cyrus-1"].state is state,
                    f"cyrus-1 {state.value}",
                )
    finally:
        watch.stop()
    over = sum(1 for delay in delays if delay > 1.0)
    print(f"\nshard status change -> new routing table version: {describe(delays)}; {over} over 1 s")
    assert len(delays) == 30
    assert statistics.median(delays) < 1.0, describe(delays)
    assert max(delays) < GENEROUS_BOUND, describe(delays)


def test_a_deleted_shard_keeps_its_slots_and_degrades_the_cluster(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    apply_examples(kubeconfig, namespace)
    before = complete_table(api_client, namespace)

    client.CustomObjectsApi(api_client).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, "mailshards", "cyrus-1"
    )
    after, elapsed = wait_for_version(
        api_client,
        namespace,
        before.version,
        "a missing shard",
        lambda t: t.shards["cyrus-1"].state is ShardState.MISSING,
    )
    assert elapsed <= GENEROUS_BOUND
    assert after.slots == before.slots, "a deleted shard's slots must not move by themselves"
    degraded = eventually(
        lambda: (c := cluster_condition(api_client, namespace, "Degraded")) and c["status"] == "True" and c,
        what="the cluster Degraded",
    )
    assert degraded["reason"] == "ShardsMissing"
    assert "683 slots" in degraded["message"]
    events = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    assert "ShardMissing" in {e.reason for e in events if e.involved_object.name == "demo" and e.type == "Warning"}


def test_overrides_follow_their_config_map_and_bad_ones_are_kept_out(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    apply_examples(kubeconfig, namespace)
    core = client.CoreV1Api(api_client)
    start = complete_table(api_client, namespace)
    core.create_namespaced_config_map(
        namespace,
        {"metadata": {"name": "demo-overrides"}, "data": {"overrides.yaml": "Alice@Example.com: cyrus-1\n"}},
    )
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "mailclusters",
        "demo",
        {"spec": {"routing": {"overridesConfigMap": "demo-overrides"}}},
    )
    first, _ = wait_for_version(api_client, namespace, start.version, "an override", lambda t: bool(t.overrides))
    assert first.overrides == {"alice@example.com": "cyrus-1"}

    core.patch_namespaced_config_map(
        "demo-overrides", namespace, {"data": {"overrides.yaml": "alice@example.com: dovecot-1\n"}}
    )
    second, elapsed = wait_for_version(api_client, namespace, first.version, "a changed override")
    assert elapsed <= GENEROUS_BOUND
    assert second.overrides == {"alice@example.com": "dovecot-1"}

    core.patch_namespaced_config_map("demo-overrides", namespace, {"data": {"overrides.yaml": "alice: [oops\n"}})
    stalled = eventually(
        lambda: (c := cluster_condition(api_client, namespace, "Stalled")) and c["status"] == "True" and c,
        what="the cluster Stalled on the overrides",
    )
    assert stalled["reason"] == "OverridesInvalid"
    assert table(api_client, namespace) == second, "unreadable overrides must not send moved users back"


def test_a_table_edited_or_deleted_behind_the_operators_back(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    apply_examples(kubeconfig, namespace)
    core = client.CoreV1Api(api_client)
    before = complete_table(api_client, namespace)

    # A hand-made move that forgot to bump the version: kept, and given one.
    moved = RoutingTable(
        version=before.version,
        slots=("dovecot-1", *before.slots[1:]),
        shards=before.shards,
        overrides=before.overrides,
    )
    core.patch_namespaced_config_map(TABLE, namespace, {"data": {TABLE_KEY: render_table(moved)}})
    republished, _ = wait_for_version(api_client, namespace, before.version, "the hand edit versioned")
    assert republished.slots == moved.slots

    # Deleted: the operator will not invent slot assignments; an empty ConfigMap is the consent to start afresh.
    core.delete_namespaced_config_map(TABLE, namespace)
    stalled = eventually(
        lambda: (c := cluster_condition(api_client, namespace, "Stalled")) and c["status"] == "True" and c,
        what="the cluster Stalled on the lost table",
    )
    assert stalled["reason"] == "RoutingTableLost"
    assert table(api_client, namespace) is None
    core.create_namespaced_config_map(namespace, {"metadata": {"name": TABLE}})
    fresh = complete_table(api_client, namespace)
    assert fresh.version > republished.version
    eventually(
        lambda: cluster_condition(api_client, namespace, "Stalled")["status"] == "False",  # type: ignore[index]
        what="the Stall cleared",
    )
