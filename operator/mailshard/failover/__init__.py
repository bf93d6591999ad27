"""Failover as pure functions: what state a shard is in, and the one thing to do about it.

Why a package of its own: the rules that decide whether a replica is promoted
are the ones that lose mail when they are wrong, and a function of its inputs
can be tested over every input, where a handler that reads clocks and calls
agents can only be tested over the cases someone thought of. So nothing here
imports kopf or kubernetes, reads a clock or does I/O; `now` is an input. It
sits between the services, which gather the facts and carry out the decision,
and the builders and models, which it may use (`.importlinter`).

The flow, per shard and per poll: `ShardFacts` (`observations`) →
`assess_member` (`liveness`: is each member up?) → `diagnose` (one
`Diagnosis`) → `decide` (one `Action`, the member it addresses, the status to
record). A failover's steps run in the fixed order of `steps`, one per
decision, recorded as they complete so that a restarted operator resumes them.
The timing defaults, and why, are in `policy`.
"""

from mailshard.failover.decide import PROMOTING, REPORTING_ONLY, Action, Decision, decide, promotion_refusal
from mailshard.failover.diagnose import Diagnosis, Finding, diagnose, lag_bound
from mailshard.failover.liveness import Heartbeat, Liveness, MemberHealth, assess_member, heartbeat
from mailshard.failover.observations import (
    FORCE_PROMOTE_ANNOTATION,
    SWITCHOVER_ANNOTATION,
    AgentReport,
    FailoverProgress,
    LagSample,
    MailboxUidNext,
    MemberFacts,
    PodState,
    RecordedState,
    ShardFacts,
)
from mailshard.failover.policy import FailoverPolicy
from mailshard.failover.steps import STEP_ORDER, FailoverStep, next_step
from mailshard.failover.uidnext import MailboxToCreate, UidNextPlan, messages_at_risk, uidnext_plan

__all__ = [
    "FORCE_PROMOTE_ANNOTATION",
    "PROMOTING",
    "REPORTING_ONLY",
    "STEP_ORDER",
    "SWITCHOVER_ANNOTATION",
    "Action",
    "AgentReport",
    "Decision",
    "Diagnosis",
    "FailoverPolicy",
    "FailoverProgress",
    "FailoverStep",
    "Finding",
    "Heartbeat",
    "LagSample",
    "Liveness",
    "MailboxToCreate",
    "MailboxUidNext",
    "MemberFacts",
    "MemberHealth",
    "PodState",
    "RecordedState",
    "ShardFacts",
    "UidNextPlan",
    "assess_member",
    "decide",
    "diagnose",
    "heartbeat",
    "lag_bound",
    "messages_at_risk",
    "next_step",
    "promotion_refusal",
    "uidnext_plan",
]
