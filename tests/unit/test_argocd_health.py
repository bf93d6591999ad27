"""The Argo CD health checks read our real statuses right: Healthy, Progressing, never Degraded mid-rollout.

The statuses fed to the Lua are computed by the operator's own pure status
function for each situation, so the checks are tested against what the
operator really writes, not against hand-written samples.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from lupa import lua51

from mailshard.api.v1alpha1 import MailShardStatus, ShardPhase
from mailshard.builders import MemberObservation, Problem, ShardObservation, compute_shard_status, failed_status

pytestmark = pytest.mark.unit

GITOPS = Path(__file__).resolve().parents[2] / "docs" / "gitops"
NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)


def health(script: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Run an Argo CD health script the way Argo CD does: a global `obj`, a returned table."""
    runtime = lua51.LuaRuntime()

    def to_lua(value: Any) -> Any:
        if isinstance(value, dict):
            return runtime.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list | tuple):
            return runtime.table_from([to_lua(v) for v in value])
        return value

    runtime.globals().obj = to_lua(obj)
    result = runtime.execute((GITOPS / script).read_text())
    return str(result["status"]), str(result["message"])


def shard_object(status: MailShardStatus | None, *, generation: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": "s", "generation": generation}}
    if status is not None:
        body["status"] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return body


def member(name: str, *, exists: bool = True, ready: bool = True, replacing: bool = False) -> MemberObservation:
    return MemberObservation(name=name, pod_exists=exists, ready=ready, node=f"node-{name}", replacing=replacing)


def observe(a: MemberObservation, b: MemberObservation, **kwargs: Any) -> ShardObservation:
    return ShardObservation(generation=1, members=(a, b), master="s-a", max_lag_seconds=30, **kwargs)


def history(*observations: ShardObservation) -> MailShardStatus:
    status = None
    for step, observation in enumerate(observations):
        status = compute_shard_status(observation, previous=status, now=NOW + datetime.timedelta(seconds=step))
    assert status is not None
    return status


HEALTHY = observe(member("s-a"), member("s-b"))
BUILDING = observe(member("s-a", exists=False, ready=False), member("s-b", exists=False, ready=False))
HALF_BUILT = observe(member("s-a"), member("s-b", ready=False))
ROLLING = observe(member("s-a"), member("s-b", ready=False, replacing=True))
LOST = observe(member("s-a"), member("s-b", ready=False))
FAILING_OVER = observe(member("s-a", ready=False), member("s-b"), target_master="s-b")


@pytest.mark.parametrize(
    ("observations", "phase", "expected"),
    [
        ((BUILDING,), ShardPhase.PENDING, "Progressing"),
        ((BUILDING, HALF_BUILT), ShardPhase.PROVISIONING, "Progressing"),
        ((BUILDING, HALF_BUILT, HEALTHY), ShardPhase.HEALTHY, "Healthy"),
        ((HEALTHY, ROLLING), ShardPhase.UPDATING, "Progressing"),
        ((HEALTHY, LOST), ShardPhase.DEGRADED, "Degraded"),
        ((HEALTHY, LOST, FAILING_OVER), ShardPhase.FAILING_OVER, "Progressing"),
    ],
)
def test_mailshard_health_follows_the_operators_status(
    observations: tuple[ShardObservation, ...], phase: ShardPhase, expected: str
) -> None:
    status = history(*observations)
    assert status.phase is phase
    assert health("argocd-health-mailshard.lua", shard_object(status))[0] == expected


def test_a_stalled_shard_is_degraded_with_the_reason() -> None:
    stalled = failed_status(
        history(HEALTHY),
        generation=1,
        problem=Problem("ClusterNotFound", "MailCluster 'x' (spec.clusterRef) does not exist"),
        now=NOW,
    )
    assert health("argocd-health-mailshard.lua", shard_object(stalled)) == (
        "Degraded",
        "MailCluster 'x' (spec.clusterRef) does not exist",
    )


def test_no_status_or_an_unobserved_generation_is_progressing() -> None:
    assert health("argocd-health-mailshard.lua", shard_object(None))[0] == "Progressing"
    status, message = health("argocd-health-mailshard.lua", shard_object(history(HEALTHY), generation=2))
    assert status == "Progressing"
    assert "generation 2" in message


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ([{"type": "Ready", "status": "True"}], "Healthy"),
        ([{"type": "Ready", "status": "False"}, {"type": "Reconciling", "status": "True"}], "Progressing"),
        ([{"type": "Stalled", "status": "True", "message": "bad"}], "Degraded"),
        ([], "Progressing"),
    ],
)
def test_mailcluster_health(conditions: list[dict[str, str]], expected: str) -> None:
    cluster = {
        "metadata": {"name": "demo", "generation": 1},
        "status": {"observedGeneration": 1, "shards": 2, "readyShards": 1, "conditions": conditions},
    }
    assert health("argocd-health-mailcluster.lua", cluster)[0] == expected


def test_the_argocd_configmap_embeds_the_scripts_verbatim() -> None:
    configmap = (GITOPS / "argocd-cm.yaml").read_text()
    for script in ("argocd-health-mailshard.lua", "argocd-health-mailcluster.lua"):
        indented = "".join(
            f"    {line}" if line.strip() else line for line in (GITOPS / script).read_text().splitlines(True)
        )
        assert indented in configmap, f"{script} in argocd-cm.yaml is out of date"
