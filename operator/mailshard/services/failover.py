"""The failover monitor: polls each shard's two agents every second, decides, and carries the decision out.

Why this module exists: the decision is pure (`mailshard.failover.decide`);
something must gather its inputs on a clock, perform the one action it
returns, and record the outcome so that a restarted operator resumes where
this one stopped. That is all this module does, one shard per kopf daemon:

1. read the facts: the MailShard as kopf's watch last delivered it, its pods
   from kopf's pod index (no API read on the one-second path), and one
   `/status` poll of each member's agent at its pod IP;
2. `decide(facts)`;
3. perform the action (an agent call, or nothing), and only if it succeeded,
4. store `decision.record` in the status when it differs (`failover.record`
   names the fields: the monitor is their only writer), then let the shard
   reconciler recompute phase, conditions and pod role labels, and publish
   the cluster's routing table, before the next step runs. So a step that
   routes ("fence routing", "repoint routing") has reached the routing table
   before the step after it starts.

A failed action is logged and retried on the next tick; nothing is recorded
for it. An alarm (the monitor will not act, a human must decide) becomes a
Warning Event, once per diagnosis, and a Stalled condition via the reconciler.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import pydantic

from mailshard.api.constants import AGENT_TOKEN_KEY, LABEL_SHARD
from mailshard.api.v1alpha1 import (
    FailoverCause,
    MailShard,
    MemberRole,
    member_names,
)
from mailshard.builders import Problem
from mailshard.builders.names import pod_name, volume_claim_name
from mailshard.builders.status import lag_to_show, was_established
from mailshard.failover import (
    FORCE_PROMOTE_ANNOTATION,
    SWITCHOVER_ANNOTATION,
    Action,
    Decision,
    FailoverStep,
    LagSample,
    MemberFacts,
    PodState,
    RecordedState,
    ShardFacts,
    UidNextPlan,
    decide,
)
from mailshard.failover.agent_report import (
    AgentAnswer,
    MalformedAnswerError,
    parse_agent_status,
    uidvalidity_not_kept,
)
from mailshard.failover.decide import route_of
from mailshard.failover.record import recorded_state, status_patch
from mailshard.metrics import OperatorMetrics
from mailshard.services.agents import AgentCallError, AgentClient
from mailshard.services.events import EventRecorder
from mailshard.services.kube import KubeApi, Manifest, pod_ready
from mailshard.services.member_views import MemberView, MemberViews, ShardKey, ShardSettings, shown_alarm

log = logging.getLogger(__name__)

MIN_PAUSE_SECONDS = 0.05
"""Even a decision that wants to be re-made at once yields this long, so a bug cannot spin the event loop."""
MAILBOXES_NAMED = 8
"""At most this many mailboxes are named in one Event (its message is cut at 1024 characters), the rest counted."""


class Stopped(Protocol):
    """kopf's `stopped` flag of a daemon (only what the loop uses)."""

    def __bool__(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> Any: ...


@dataclass(frozen=True)
class PodView:
    """What the monitor needs of a member's pod, as kopf's pod index stores it."""

    name: str
    ip: str | None
    ready: bool
    deleting: bool
    node: str | None
    uid: str | None = None


def pod_view(body: Mapping[str, Any]) -> PodView:
    """Reduce a pod to a `PodView` (kopf's index keeps only this, not whole pods)."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    return PodView(
        name=meta.get("name", ""),
        ip=status.get("podIP") or None,
        ready=pod_ready(body),
        deleting=bool(meta.get("deletionTimestamp")),
        node=(body.get("spec") or {}).get("nodeName"),
        uid=meta.get("uid"),
    )


def pod_index_key(namespace: str, labels: Mapping[str, str]) -> ShardKey | None:
    shard = labels.get(LABEL_SHARD)
    return (namespace, shard) if shard else None


@dataclass(frozen=True)
class _Reach:
    """How to call one shard's agents in this tick."""

    agents: AgentClient
    pods: Mapping[str, PodView | None]
    port: int
    token: str | None

    def _address(self, member: str) -> tuple[str, str]:
        pod = self.pods.get(member)
        if pod is None or pod.ip is None or pod.deleting:
            raise AgentCallError(f"{member} has no pod IP to reach its agent at")
        if self.token is None:
            raise AgentCallError("the shard's Secret holds no agent token")
        return f"{pod.ip}:{self.port}", self.token

    async def act(self, member: str, verb: str, *, force: bool = False) -> None:
        address, token = self._address(member)
        await self.agents.act(address, token, verb, force=force)

    async def raise_uidnext(self, member: str, plan: UidNextPlan) -> Any:
        address, token = self._address(member)
        return await self.agents.raise_uidnext(address, token, plan)

    async def rejoin(self, member: str) -> None:
        """Demote, then re-seed: how a member that served as master becomes a replica again."""
        address, token = self._address(member)
        await self.agents.act(address, token, "demote")
        await self.agents.reseed(address, token)


@dataclass
class _MemberMemory:
    polls: int = 0
    """Polls made since this operator started (a restart forgets every heartbeat)."""
    last_heartbeat: datetime | None = None
    failed_polls: int = 0
    answer: AgentAnswer | None = None
    lag: LagSample | None = None
    last_in_sync: datetime | None = None
    last_error: str | None = None
    shown_lag: float | None = None
    """The lag last published for the status (`lag_to_show`)."""
    pod_uid: str | None = None
    """The pod the lag memory is about: a new pod may have a new, empty volume, so nothing known carries over."""

    def forget_lag(self) -> None:
        self.lag, self.last_in_sync, self.shown_lag = None, None, None


@dataclass
class _ShardMemory:
    record: RecordedState
    """The record as this monitor knows it: its own last write, until the watched body shows something newer."""
    replaced: list[RecordedState] = field(default_factory=list)
    """The records our writes replaced: while the watched body still shows one, the watch is behind us."""
    members: dict[str, _MemberMemory] = field(default_factory=dict)
    token: str | None = None
    alarmed: tuple[str, str] | None = None
    """(diagnosis, action) of the alarm last reported, so each is told once."""
    alarm: Problem | None = None
    polled_at: datetime | None = None
    """When both agents were last polled (the operator's clock)."""
    failing_call: tuple[str, str | None, str | None] | None = None
    """(action, step, member) of an agent call that failed and was not yet done since, so each is told once."""


class FailoverMonitor:
    """One loop per shard (`watch`); `tick` is one poll, decision and action."""

    def __init__(
        self,
        api: KubeApi,
        events: EventRecorder,
        views: MemberViews,
        *,
        after_record: Callable[[str, str, str | None], None],
        metrics: OperatorMetrics | None = None,
        agents: AgentClient | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.api = api
        self.events = events
        self.views = views
        self.after_record = after_record
        """Called in a thread with (namespace, shard, cluster) once a record is stored: reconcile, publish routing."""
        self.metrics = metrics or OperatorMetrics()
        self.agents = agents or AgentClient()
        self.clock = clock or (lambda: datetime.now(UTC))
        self._shards: dict[ShardKey, _ShardMemory] = {}

    async def watch(
        self,
        namespace: str,
        name: str,
        body: Callable[[], Manifest],
        pods: Callable[[], Sequence[PodView]],
        stopped: Stopped,
    ) -> None:
        """Poll and act until kopf stops the daemon (the shard is deleted, or the operator stops)."""
        key = (namespace, name)
        try:
            while not stopped:
                try:
                    delay = await self.tick(namespace, name, body(), pods())
                except Exception:  # one bad tick must not end the shard's monitoring
                    log.exception("failover monitor of %s/%s failed a tick", namespace, name)
                    delay = 1.0
                await stopped.wait(max(delay, MIN_PAUSE_SECONDS))
        finally:
            self._shards.pop(key, None)

    # --------------------------------------------------------------------------------------- one tick

    async def tick(self, namespace: str, name: str, body: Manifest, pods: Sequence[PodView]) -> float:
        """Poll, decide, act, record; returns the seconds until the next tick."""
        key = (namespace, name)
        settings = self.views.settings(key)
        shard = _parse(body)
        if settings is None or shard is None or shard.status.master is None:
            return 1.0  # the reconciler has not resolved the shard or chosen its first master yet
        stored = recorded_state(shard.status)
        memory = self._shards.get(key)
        if memory is None:
            memory = self._shards[key] = _ShardMemory(record=stored)
            memory.alarm, memory.alarmed = _stored_alarm(shard)
        elif stored not in memory.replaced:
            # The watch has caught up with our writes, or someone else changed the status: it is the truth.
            memory.record, memory.replaced = stored, []
        if memory.token is None:
            memory.token = await asyncio.to_thread(self._read_token, namespace, settings.secret)
        members = member_names(name)
        by_name = {pod.name: pod for pod in pods}
        member_pods = {member: by_name.get(pod_name(member)) for member in members}
        polled = self.clock()
        # A failover runs its steps back to back, one per tick. Polling both agents before each of them cost up to
        # the poll timeout per step while the old master's address black-holes; within one poll interval the last
        # answers stand (a step that needs a newer one holds, and the next tick polls).
        chained = (
            memory.record.failover is not None
            and memory.polled_at is not None
            and (polled - memory.polled_at).total_seconds() < settings.policy.poll_interval_seconds
        )
        if not chained:
            await asyncio.gather(
                *(self._poll(memory, member, pod, settings.agent_port) for member, pod in member_pods.items())
            )
            memory.polled_at = polled
        if not was_established(shard.status) or (
            not self._warmed_up(memory, settings) and memory.record.failover is None
        ):
            # Right after a (re)start the monitor has no history of its own; absence of it is not a symptom.
            self._publish_views(key, memory)
            return settings.policy.poll_interval_seconds
        now = self.clock()
        annotations = body["metadata"].get("annotations") or {}
        leaving = await asyncio.to_thread(self._volumes_leaving, namespace, members, memory, annotations)
        facts = ShardFacts(
            members=(
                _facts(members[0], member_pods[members[0]], memory, members[0] in leaving),
                _facts(members[1], member_pods[members[1]], memory, members[1] in leaving),
            ),
            recorded=memory.record,
            policy=settings.policy,
            now=now,
            switchover_to=annotations.get(SWITCHOVER_ANNOTATION),
            force_promote_to=annotations.get(FORCE_PROMOTE_ANNOTATION),
        )
        route_before = route_of(memory.record)
        decision = decide(facts)
        done = await self._carry_out(body, memory, member_pods, settings, decision)
        views_changed = self._publish_views(key, memory)
        if done and decision.record != memory.record:
            await asyncio.to_thread(self._store, body, memory, decision.record)
            # The routing table follows the record only through where routing points. Republishing it (a whole
            # cluster reconcile) after every step cost up to a second each; now only the steps that move it pay.
            cluster = settings.cluster if decision.route_to != route_before else None
            await asyncio.to_thread(self.after_record, namespace, name, cluster)
        elif views_changed:
            await asyncio.to_thread(self.after_record, namespace, name, None)
        return decision.recheck_after if done else settings.policy.poll_interval_seconds

    def _volumes_leaving(
        self, namespace: str, members: Sequence[str], memory: _ShardMemory, annotations: Mapping[str, str]
    ) -> set[str]:
        """The members whose mail claim is being deleted or gone, read only when a promotion may be near.

        A promotion is near when a human asks for one, a failover runs, or an agent stopped answering. Otherwise
        nothing is read: a steady shard costs the API server nothing here. (A switchover asked for while the
        target's claim was being deleted promoted it; the claim's pod then came back on an empty volume.)
        """
        near = (
            SWITCHOVER_ANNOTATION in annotations
            or FORCE_PROMOTE_ANNOTATION in annotations
            or memory.record.failover is not None
            or any(state.failed_polls for state in memory.members.values())
        )
        if not near:
            return set()
        leaving = set()
        for member in members:
            claim = self.api.get("PersistentVolumeClaim", volume_claim_name(member), namespace)
            if claim is None or claim["metadata"].get("deletionTimestamp"):
                leaving.add(member)
        return leaving

    def _read_token(self, namespace: str, secret: str) -> str | None:
        found = self.api.get("Secret", secret, namespace)
        encoded = ((found or {}).get("data") or {}).get(AGENT_TOKEN_KEY)
        return base64.b64decode(encoded).decode() if encoded else None

    async def _poll(self, memory: _ShardMemory, member: str, pod: PodView | None, port: int) -> None:
        state = memory.members.setdefault(member, _MemberMemory())
        state.polls += 1
        if pod is not None and pod.uid != state.pod_uid:
            # What the old pod said about its store does not bound the new pod's: its volume may be new and empty
            # (a lost volume), and a stale "in sync 5 s ago" would let an empty replica be promoted.
            state.forget_lag()
            state.pod_uid = pod.uid
        if pod is None or pod.deleting or pod.ip is None or memory.token is None:
            state.failed_polls += 1
            state.last_error = "no pod IP to poll" if memory.token is not None else "no agent token in the Secret"
            return
        try:
            document = await self.agents.status(f"{pod.ip}:{port}", memory.token)
            answer = parse_agent_status(document, self.clock())
        except (AgentCallError, MalformedAnswerError) as error:
            state.failed_polls += 1
            state.last_error = str(error)
            return
        state.failed_polls, state.last_error = 0, None
        state.last_heartbeat, state.answer = self.clock(), answer
        if answer.lag_unbounded:
            state.forget_lag()
        if answer.lag is not None:
            state.lag = answer.lag
        if answer.last_in_sync is not None:
            state.last_in_sync = answer.last_in_sync

    # ------------------------------------------------------------------------------------ the action

    async def _carry_out(
        self,
        body: Manifest,
        memory: _ShardMemory,
        pods: Mapping[str, PodView | None],
        settings: ShardSettings,
        decision: Decision,
    ) -> bool:
        """Perform the decision's action; False when it failed (nothing is recorded then)."""
        action, member = decision.action, decision.member
        reach = _Reach(self.agents, pods, settings.agent_port, memory.token)
        try:
            if action is Action.CONTINUE_FAILOVER and member is not None:
                await self._step(body, reach, decision, member)
            elif action is Action.ABORT_FAILOVER and member is not None:
                await reach.act(member, "unfence")
            elif action is Action.REPAIR_SPLIT_BRAIN and member is not None:
                await reach.act(member, "fence")
            elif action is Action.RESEED_REPLICA and member is not None:
                await reach.rejoin(member)
        except AgentCallError as error:
            meta = body["metadata"]
            log.warning("%s/%s: %s failed: %s", meta["namespace"], meta["name"], action.value, error)
            # Retried at every tick; a human should see it once, not only in the operator's log.
            step = decision.step.value if decision.step is not None else None
            if memory.failing_call != (action.value, step, member):
                memory.failing_call = (action.value, step, member)
                what = action.value + (f" ({step})" if step is not None else "")
                message = f"{what} on {member} failed, retrying: {error}"
                await asyncio.to_thread(self.events.record, body, "Warning", "AgentCallFailed", message)
            return False
        memory.failing_call = None
        await asyncio.to_thread(self._tell, body, memory, decision)
        return True

    async def _step(self, body: Manifest, reach: _Reach, decision: Decision, member: str) -> None:
        """The agent call of a failover step; routing steps, drain and record are done by storing the record."""
        step = decision.step
        if step is FailoverStep.FENCE_OLD_MASTER:
            await reach.act(member, "fence")
        elif step is FailoverStep.PROMOTE:
            # The old master is fenced or unreachable by now, though its peer may still list it as master.
            await reach.act(member, "promote", force=True)
        elif step is FailoverStep.RAISE_UIDNEXT:
            plan = decision.uidnext_plan or UidNextPlan()
            try:
                answer = await reach.raise_uidnext(member, plan)
            except AgentCallError as error:
                if error.status != 501:
                    raise
                message = (
                    f"{member} cannot raise UIDNEXT ({error}); UIDs of messages the old master accepted "
                    "but did not replicate may be reused"
                )
                await asyncio.to_thread(self.events.record, body, "Warning", "UidNextNotRaised", message)
                return
            changed = [f"{name} (under another UIDVALIDITY here already)" for name in plan.diverged]
            changed += uidvalidity_not_kept(answer)
            if changed:
                message = (
                    f"{len(changed)} mailbox(es) on {member} do not have the UIDVALIDITY the old master gave them, "
                    f"so their clients will download them again: {'; '.join(changed[:MAILBOXES_NAMED])}"
                    + (f"; and {len(changed) - MAILBOXES_NAMED} more" if len(changed) > MAILBOXES_NAMED else "")
                )
                await asyncio.to_thread(self.events.record, body, "Warning", "UidValidityNotKept", message)
        elif step is FailoverStep.REPLAY_JOURNAL:
            try:
                await reach.act(member, "replay")
            except AgentCallError as error:
                if error.status != 501:
                    raise
                message = (
                    f"{member} cannot replay the delivery journal ({error}); messages the old master "
                    "acknowledged but did not replicate may be missing"
                )
                await asyncio.to_thread(self.events.record, body, "Warning", "JournalNotReplayed", message)
        elif step is FailoverStep.REJOIN_OLD_MASTER:
            await reach.rejoin(member)

    def _tell(self, body: Manifest, memory: _ShardMemory, decision: Decision) -> None:
        """Events and metrics for what was just done."""
        action = decision.action
        meta = body["metadata"]
        progress = decision.record.failover
        if action is Action.RAISE_ALARM:
            key = (decision.diagnosis.value, action.value)
            if memory.alarmed != key:
                memory.alarmed = key
                memory.alarm = Problem(reason=decision.diagnosis.value, message=decision.reason)
                self.events.record(body, "Warning", decision.diagnosis.value, decision.reason)
            return
        if action is Action.WAIT and memory.alarm is not None and memory.alarm.reason == decision.diagnosis.value:
            return  # still the same trouble, merely not worth a new alarm this tick
        memory.alarmed, memory.alarm = None, None
        if action in (Action.START_FAILOVER, Action.DRAIN_THEN_SWITCH, Action.ABORT_FAILOVER, Action.FORCE_PROMOTION):
            self.events.record(
                body, "Warning" if action is not Action.DRAIN_THEN_SWITCH else "Normal", action.value, decision.reason
            )
        elif action is Action.REJECT_SWITCHOVER:
            self.events.record(body, "Warning", action.value, decision.reason)
            _remove_request(self.api, meta, SWITCHOVER_ANNOTATION)
        elif action is Action.REJECT_FORCED_PROMOTION:
            self.events.record(body, "Warning", action.value, decision.reason)
            _remove_request(self.api, meta, FORCE_PROMOTE_ANNOTATION)
        elif action is Action.MARK_FAILING:
            self.events.record(body, "Warning", "MasterDown", decision.reason)
        elif action is Action.CONTINUE_FAILOVER and decision.step is FailoverStep.RECORD:
            last = decision.record.last_failover
            finished = memory.record.failover
            cause = finished.cause if finished is not None else FailoverCause.MASTER_DOWN
            self.metrics.failovers.labels(namespace=meta["namespace"], shard=meta["name"], reason=cause.value).inc()
            if last is not None and last.duration_seconds is not None:
                self.metrics.failover_duration.observe(last.duration_seconds)
            self.events.record(body, "Normal", _COMPLETED_EVENTS[cause], decision.reason)
            if cause is FailoverCause.SWITCHOVER:
                _remove_request(self.api, meta, SWITCHOVER_ANNOTATION)
            elif cause is FailoverCause.FORCED_PROMOTION:
                _remove_request(self.api, meta, FORCE_PROMOTE_ANNOTATION)
        elif action is Action.CONTINUE_FAILOVER and progress is not None:
            log.info("%s/%s: %s", meta["namespace"], meta["name"], decision.reason)

    def _store(self, body: Manifest, memory: _ShardMemory, record: RecordedState) -> None:
        meta = body["metadata"]
        patch = status_patch(record, memory.record)
        self.api.merge_patch("MailShard", meta["name"], meta["namespace"], {"status": patch}, subresource="status")
        memory.replaced.append(memory.record)
        memory.record = record

    @staticmethod
    def _warmed_up(memory: _ShardMemory, settings: ShardSettings) -> bool:
        """Whether each member has answered, or been polled often enough for its silence to mean something."""
        return all(
            state.answer is not None or state.polls >= settings.policy.missed_polls for state in memory.members.values()
        )

    def _publish_views(self, key: ShardKey, memory: _ShardMemory) -> bool:
        views = {}
        for member, state in memory.members.items():
            answer = state.answer
            if answer is None or state.failed_polls:
                continue
            role = answer.report.role
            measured = state.lag.seconds if state.lag is not None and role is MemberRole.REPLICA else None
            state.shown_lag = lag_to_show(state.shown_lag, measured)
            views[member] = MemberView(role=role, lag_seconds=state.shown_lag, last_sync_time=_second(answer.last_sync))
        return self.views.publish(key, views, memory.alarm)


def _stored_alarm(shard: MailShard) -> tuple[Problem | None, tuple[str, str] | None]:
    """The alarm the status already shows (a Stalled condition of ours), so a restart neither repeats nor rewords it."""
    alarm = shown_alarm(shard.status)
    return (alarm, (alarm.reason, Action.RAISE_ALARM.value)) if alarm is not None else (None, None)


_COMPLETED_EVENTS = {
    FailoverCause.MASTER_DOWN: "FailoverCompleted",
    FailoverCause.SWITCHOVER: "SwitchoverCompleted",
    FailoverCause.FORCED_PROMOTION: "ForcedPromotionCompleted",
}


def _remove_request(api: KubeApi, meta: Mapping[str, Any], annotation: str) -> None:
    """A human's request is answered (done or refused): remove it, so it is not acted on again."""
    patch = {"metadata": {"annotations": {annotation: None}}}
    api.merge_patch("MailShard", meta["name"], meta["namespace"], patch)


def _second(moment: datetime | None) -> datetime | None:
    """Whole seconds: a sub-second change in a reported time is not worth a status write."""
    return None if moment is None else moment.replace(microsecond=0)


def _parse(body: Manifest) -> MailShard | None:
    try:
        return MailShard.from_resource(body)
    except pydantic.ValidationError:
        return None  # the reconciler reports an invalid spec


def _facts(member: str, pod: PodView | None, memory: _ShardMemory, volume_leaving: bool = False) -> MemberFacts:
    state = memory.members.get(member) or _MemberMemory()
    pod_state = PodState.NOT_READY
    if pod is None or pod.deleting:
        pod_state = PodState.ABSENT
    elif pod.ready:
        pod_state = PodState.READY
    answer = state.answer
    return MemberFacts(
        name=member,
        pod=pod_state,
        last_heartbeat=state.last_heartbeat,
        failed_polls=state.failed_polls,
        report=answer.report if answer is not None else None,
        lag=state.lag,
        last_in_sync=state.last_in_sync,
        volume_leaving=volume_leaving,
    )
