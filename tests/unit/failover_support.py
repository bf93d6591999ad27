"""Named member profiles and shard builders for the failover tests.

A profile is what one member looks like to the operator at `now`: its pod,
how its polls went, and what its agent last said. The transition tables are
written in these names, so a reader checks a row against the profile's
one-line description here rather than against a pile of constructor calls.

`Pair` plays the service layer for timelines: it polls two simulated agents
once a second, decides, carries out the action on the agents, records the new
status, and decides again at once after any action that changed something.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from mailshard.api import MemberRole
from mailshard.failover import (
    Action,
    AgentReport,
    Decision,
    FailoverPolicy,
    FailoverStep,
    LagSample,
    MailboxUidNext,
    MemberFacts,
    PodState,
    RecordedState,
    ShardFacts,
    decide,
)

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
A, B = "inbox-1-a", "inbox-1-b"
DELAY = 5.0
"""The tables use a delay long enough to tell its phases apart."""
POLICY = FailoverPolicy(enabled=True, delay_seconds=DELAY, max_lag_seconds=30)
DISABLED = replace(POLICY, enabled=False)

MASTER, REPLICA, UNKNOWN = MemberRole.MASTER, MemberRole.REPLICA, MemberRole.UNKNOWN

Profile = Callable[[str, datetime], MemberFacts]


def ago(now: datetime, seconds: float) -> datetime:
    return now - timedelta(seconds=seconds)


def answering(
    name: str,
    now: datetime,
    *,
    role: MemberRole,
    fenced: bool = False,
    daemon_up: bool = True,
    pod: PodState = PodState.READY,
    lag: float | None = 0.5,
    lag_age: float = 0.5,
    peer_silence: float | None = 0.5,
    mailboxes: tuple[MailboxUidNext, ...] | None = None,
) -> MemberFacts:
    """A member whose agent answered the latest poll, half a second ago."""
    return MemberFacts(
        name=name,
        pod=pod,
        node_ready=True,
        last_heartbeat=ago(now, 0.5),
        failed_polls=0,
        report=AgentReport(
            role=role, fenced=fenced, daemon_up=daemon_up, peer_silence_seconds=peer_silence, mailboxes=mailboxes
        ),
        lag=LagSample(lag, ago(now, lag_age)) if lag is not None else None,
    )


def late(name: str, now: datetime, *, role: MemberRole) -> MemberFacts:
    """Missed one poll: last answer 1.5 s ago (below the 2 s timeout)."""
    member = answering(name, now, role=role, lag_age=1.5)
    return replace(member, last_heartbeat=ago(now, 1.5), failed_polls=1)


def silent(name: str, now: datetime, *, role: MemberRole, pod: PodState = PodState.READY) -> MemberFacts:
    """Three failed polls, last answer 3 s ago; the stale report still shows the role."""
    member = answering(name, now, role=role, lag_age=3.0, pod=pod)
    return replace(member, last_heartbeat=ago(now, 3.0), failed_polls=3)


# --- the recorded master's profiles (member A) ------------------------------------------------------

MASTER_PROFILES: dict[str, Profile] = {
    "up": lambda n, t: answering(n, t, role=MASTER, lag=None),
    "suspect": lambda n, t: late(n, t, role=MASTER),
    "silent": lambda n, t: silent(n, t, role=MASTER),
    "gone": lambda n, t: silent(n, t, role=MASTER, pod=PodState.ABSENT),
    "crashed": lambda n, t: answering(n, t, role=MASTER, daemon_up=False, lag=None),
    "unready": lambda n, t: silent(n, t, role=MASTER, pod=PodState.NOT_READY),
    "fenced": lambda n, t: answering(n, t, role=MASTER, fenced=True, lag=None),
    "disowns": lambda n, t: answering(n, t, role=REPLICA, lag=None),
}
"""up: answers, serves. suspect: missed a poll. silent: 3 s of failed polls, pod Ready. gone: pod deleted.
crashed: its agent says the daemon is down. unready: silent and pod NotReady. fenced: answers, fenced.
disowns: answers but says its role is replica."""

# --- the recorded replica's profiles (member B) -----------------------------------------------------

REPLICA_PROFILES: dict[str, Profile] = {
    "sees": lambda n, t: answering(n, t, role=REPLICA),
    "blind": lambda n, t: answering(n, t, role=REPLICA, lag=0.8, lag_age=2.5, peer_silence=3.0),
    "laggy": lambda n, t: answering(n, t, role=REPLICA, lag=40.0),
    "nolag": lambda n, t: answering(n, t, role=REPLICA, lag=None),
    "blindnolag": lambda n, t: answering(n, t, role=REPLICA, lag=None, peer_silence=3.0),
    "suspect": lambda n, t: late(n, t, role=REPLICA),
    "silent": lambda n, t: silent(n, t, role=REPLICA),
    "gone": lambda n, t: silent(n, t, role=REPLICA, pod=PodState.ABSENT),
    "fenced": lambda n, t: answering(n, t, role=REPLICA, fenced=True),
    "returned": lambda n, t: answering(n, t, role=MASTER, fenced=True),
    "roleless": lambda n, t: answering(n, t, role=UNKNOWN, lag=None),
    "rogue": lambda n, t: answering(n, t, role=MASTER),
}
"""sees: in sync, hears the master. blind: in sync 2.5 s ago, has not heard the master for 3 s.
laggy: 40 s behind. nolag: never reported a lag. blindnolag: no lag, lost the master. suspect, silent,
gone: as for the master. fenced: a fenced replica. returned: claims master but fenced (an old master back).
roleless: role file lost. rogue: claims master, unfenced, in sync."""


def grid(text: str) -> dict[tuple[str, str], str]:
    """A table written as text: a header `row \\ column  c1 c2 ...`, then one line per row; cells by (row, column)."""
    header, *rows = (line.split() for line in text.splitlines() if line.strip())
    columns = header[3:]  # after "row \\ column"
    return {(row[0], column): cell for row in rows for column, cell in zip(columns, row[1:], strict=True)}


def shard(
    master: MemberFacts,
    replica: MemberFacts,
    *,
    now: datetime = T0,
    recorded: RecordedState | None = None,
    policy: FailoverPolicy = POLICY,
    switchover_to: str | None = None,
    force_promote_to: str | None = None,
) -> ShardFacts:
    """A shard whose recorded master is `master` (members in name order, as the service lists them)."""
    members = (master, replica) if master.name < replica.name else (replica, master)
    return ShardFacts(
        members=members,
        recorded=recorded if recorded is not None else RecordedState(master=master.name),
        policy=policy,
        now=now,
        switchover_to=switchover_to,
        force_promote_to=force_promote_to,
    )


# --- a simulated pair and the service loop over it ---------------------------------------------------


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass
class Agent:
    """One simulated member: what its agent would answer, and what the operator remembers of it."""

    name: str
    role: MemberRole
    fenced: bool = False
    daemon_up: bool = True
    pod: PodState = PodState.READY
    answers: bool = True
    peer_silence: float | None = 0.3
    lag: LagSample | None = None
    mailboxes: tuple[MailboxUidNext, ...] | None = None
    last_heartbeat: datetime | None = None
    failed_polls: int = 0
    report: AgentReport | None = None

    def poll(self, now: datetime) -> None:
        if self.answers and self.pod is not PodState.ABSENT:
            self.last_heartbeat, self.failed_polls = now, 0
            self.report = AgentReport(self.role, self.fenced, self.daemon_up, self.peer_silence, self.mailboxes)
        else:
            self.failed_polls += 1

    def facts(self) -> MemberFacts:
        return MemberFacts(
            name=self.name,
            pod=self.pod,
            last_heartbeat=self.last_heartbeat,
            failed_polls=self.failed_polls,
            report=self.report,
            lag=self.lag,
        )

    def die(self) -> None:
        self.pod, self.answers = PodState.ABSENT, False


@dataclass
class Pair:
    """The service loop over two simulated agents, A recorded as master."""

    a: Agent
    b: Agent
    policy: FailoverPolicy = POLICY
    record: RecordedState = field(default_factory=lambda: RecordedState(master=A))
    switchover_to: str | None = None
    force_promote_to: str | None = None
    pause_after: FailoverStep | None = None
    """Stop the loop once this step is carried out and recorded, as if the operator stopped there."""
    crash_after: FailoverStep | None = None
    """Stop the loop once this step is carried out but before it is recorded, as if the operator crashed."""
    log: list[tuple[float, Decision]] = field(default_factory=list)

    def agent(self, name: str) -> Agent:
        return self.a if name == A else self.b

    def facts(self, now: datetime) -> ShardFacts:
        return ShardFacts(
            (self.a.facts(), self.b.facts()), self.record, self.policy, now, self.switchover_to, self.force_promote_to
        )

    def tick(self, seconds: float, *, poll: bool = True) -> list[Decision]:
        """One poll of both agents at T0 + seconds, then decisions until one says to wait."""
        now = at(seconds)
        if poll:
            self.a.poll(now)
            self.b.poll(now)
        decisions = []
        for _ in range(20):
            decision = decide(self.facts(now))
            decisions.append(decision)
            self.log.append((seconds, decision))
            self._carry_out(decision, now)
            if decision.step is not None and decision.step is self.crash_after:
                self.crash_after = None
                return decisions
            self.record = decision.record
            if decision.step is not None and decision.step is self.pause_after:
                self.pause_after = None
                return decisions
            if decision.action is Action.REJECT_FORCED_PROMOTION:
                self.force_promote_to = None
                return decisions
            if decision.recheck_after > 0 or decision.action is Action.REJECT_SWITCHOVER:
                if decision.action is Action.REJECT_SWITCHOVER:
                    self.switchover_to = None
                return decisions
        raise AssertionError(f"no decision to wait after 20 in a row: {decisions}")

    def run(self, start: int, stop: int) -> list[tuple[float, Decision]]:
        first = len(self.log)
        for second in range(start, stop):
            self.tick(second)
        return self.log[first:]

    def _carry_out(self, decision: Decision, now: datetime) -> None:
        if decision.action is Action.DRAIN_THEN_SWITCH:
            self.switchover_to = None
        progress = self.record.failover
        if decision.step is FailoverStep.RECORD and progress is not None and progress.forced:
            self.force_promote_to = None  # the service removes the request once the forced promotion is done
        if decision.member is None:
            return
        agent = self.agent(decision.member)
        if not agent.answers:
            return
        action, step = decision.action, decision.step
        if action is Action.REPAIR_SPLIT_BRAIN or step is FailoverStep.FENCE_OLD_MASTER:
            agent.fenced = True
        elif action is Action.ABORT_FAILOVER:
            agent.fenced = False
        elif action is Action.RESEED_REPLICA or step is FailoverStep.REJOIN_OLD_MASTER:
            agent.role, agent.fenced = REPLICA, False
        elif step is FailoverStep.PROMOTE:
            agent.role = MASTER
        else:
            return
        agent.poll(now)  # the agent answers a role change with its new status


def healthy_pair(*, policy: FailoverPolicy = POLICY, lag_at: float = -0.5) -> Pair:
    """A master and an in-sync replica; the replica's last lag sample (0.5 s) dates from `lag_at`."""
    replica = Agent(B, REPLICA, lag=LagSample(0.5, at(lag_at)))
    return Pair(Agent(A, MASTER), replica, policy=policy)
