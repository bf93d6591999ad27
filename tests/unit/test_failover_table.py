"""The exhaustive transition tables of failover: every combination of the inputs that matter, and its answer.

The tables are data, written by hand from the rules in `mailshard.failover`'s
docstrings, not computed from the code under test:

1. `DIAGNOSES`: the recorded master's profile by the replica's profile → the
   diagnosis (profiles are described in `failover_support`).
2. That grid by failingSince by recoveringSince by uncertainSince by enabled →
   the action, the member it addresses, and what happens to failingSince,
   from `ENABLED_ACTION`/`DISABLED_ACTION`, `PROMOTION` and the timer rules.
3. `IN_PROGRESS`: a failover's last completed step by the old master's profile
   by the target's profile by time since that step, then by planned by enabled
   → what is done next.
4. `SWITCHOVERS`: a switchover request in each state of the shard.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from itertools import product

import pytest
from failover_support import (
    DISABLED,
    MASTER,
    MASTER_PROFILES,
    POLICY,
    REPLICA,
    REPLICA_PROFILES,
    T0,
    A,
    B,
    Profile,
    ago,
    answering,
    grid,
    late,
    shard,
    silent,
)

from mailshard.failover import (
    Action,
    Diagnosis,
    FailoverProgress,
    FailoverStep,
    LagSample,
    PodState,
    RecordedState,
    decide,
)

pytestmark = pytest.mark.unit

D = Diagnosis
ABBREVIATIONS = {
    "OK": D.HEALTHY,
    "LAG": D.REPLICA_LAGGING,
    "RS": D.REPLICA_SUSPECT,
    "RD": D.REPLICA_DOWN,
    "RF": D.REPLICA_FENCED,
    "RR": D.REPLICA_NEEDS_RESEED,
    "SB": D.SPLIT_BRAIN,
    "MS": D.MASTER_SUSPECT,
    "MD": D.MASTER_DOWN,
    "BD": D.BOTH_DOWN,
    "MF": D.MASTER_FENCED,
    "UN": D.UNCERTAIN,
}

# --- 1. the diagnosis grid ---------------------------------------------------------------------------

DIAGNOSIS_GRID = """
master \\ replica  sees blind laggy nolag blindnolag suspect silent gone fenced returned roleless rogue
up                 OK   OK    LAG   LAG   LAG        RS      RD     RD   RF     RR       RR       SB
suspect            MS   MS    MS    MS    MS         MS      MS     MS   MS     MS       MS       MS
silent             UN   MD    UN    UN    MD         UN      UN     UN   UN     UN       UN       UN
gone               MD   MD    MD    MD    MD         MD      BD     BD   MD     MD       MD       MD
crashed            MD   MD    MD    MD    MD         MD      BD     BD   MD     MD       MD       MD
unready            MD   MD    MD    MD    MD         MD      BD     BD   MD     MD       MD       MD
fenced             MF   MF    MF    MF    MF         MF      MF     MF   MF     MF       MF       MF
disowns            UN   UN    UN    UN    UN         UN      UN     UN   UN     UN       UN       UN
"""


DIAGNOSES: dict[tuple[str, str], Diagnosis] = {key: ABBREVIATIONS[cell] for key, cell in grid(DIAGNOSIS_GRID).items()}


def test_the_grid_covers_every_pair_of_profiles() -> None:
    assert set(DIAGNOSES) == set(product(MASTER_PROFILES, REPLICA_PROFILES))


# --- 2. the action for each diagnosis, timer state and spec flag ------------------------------------

W, M, C, S, X = Action.WAIT, Action.MARK_FAILING, Action.CLEAR_FAILING, Action.START_FAILOVER, Action.RAISE_ALARM
ENABLED_ACTION = {
    D.HEALTHY: W,
    D.MASTER_SUSPECT: W,
    D.REPLICA_SUSPECT: W,
    D.REPLICA_DOWN: W,
    D.REPLICA_LAGGING: X,
    D.REPLICA_FENCED: X,
    D.MASTER_FENCED: X,
    D.BOTH_DOWN: X,
    D.REPLICA_NEEDS_RESEED: Action.RESEED_REPLICA,
    D.SPLIT_BRAIN: Action.REPAIR_SPLIT_BRAIN,
}
"""Diagnoses whose action does not depend on the delay, with failover enabled."""
DISABLED_ACTION = {**ENABLED_ACTION, D.REPLICA_NEEDS_RESEED: X, D.SPLIT_BRAIN: X}
"""The same with failover disabled: whatever would act, alarms instead."""
PROMOTION = {
    "sees": S,
    "blind": S,
    "rogue": S,
    "suspect": W,
    "laggy": X,
    "nolag": X,
    "blindnolag": X,
    "fenced": X,
    "returned": X,
    "roleless": X,
}
"""MASTER_DOWN once the delay has passed, by the replica's profile: promote, wait for it to answer, or alarm."""
MASTER_DOWN_BEFORE_DELAY = {"none": M, "recent": W}
"""MASTER_DOWN within the delay: the first sight records failingSince, later ones wait."""
ADDRESSED = {S: B, Action.RESEED_REPLICA: B, Action.REPAIR_SPLIT_BRAIN: B}
"""Actions that address a member, and which one (the master is A, the replica B, in every row)."""

FAILING = {"none": None, "recent": 2.0, "old": 10.0}
"""Seconds since failingSince: within the 5 s delay, or past it."""
RECOVERING = {"none": None, "recent": 1.0, "old": 6.0}
"""Seconds since recoveringSince: within the 5 s recovery window, or past it."""
UNCERTAIN = {"none": None, "recent": 5.0, "old": 40.0}
"""Seconds since uncertainSince: within the 30 s alarm threshold, or past it."""


@dataclass(frozen=True)
class Row:
    master: str
    replica: str
    failing: str
    recovering: str
    uncertain: str
    enabled: bool
    diagnosis: Diagnosis
    action: Action
    member: str | None
    failing_after: str
    """What failingSince becomes: "now", "kept", "cleared" or "none"."""

    @property
    def id(self) -> str:
        flag = "on" if self.enabled else "off"
        return f"{self.master}-{self.replica}-F{self.failing}-R{self.recovering}-U{self.uncertain}-{flag}"


def _expected(
    master: str, replica: str, *, failing: str, recovering: str, uncertain: str, enabled: bool
) -> tuple[Action, str]:
    """The action and what failingSince becomes, from the tables above and the timer rules."""
    diagnosis = DIAGNOSES[master, replica]
    master_serves = master == "up"
    if diagnosis in (D.MASTER_DOWN, D.BOTH_DOWN):
        failing_after = "now" if failing == "none" else "kept"
    elif failing != "none" and master_serves and recovering == "old":
        failing_after = "cleared"
    else:
        failing_after = "none" if failing == "none" else "kept"

    if diagnosis is D.UNCERTAIN:
        return (X if uncertain == "old" else W), failing_after
    if diagnosis is D.MASTER_DOWN:
        if not enabled:
            return X, failing_after
        if failing in MASTER_DOWN_BEFORE_DELAY:
            return MASTER_DOWN_BEFORE_DELAY[failing], failing_after
        return PROMOTION[replica], failing_after
    action = (ENABLED_ACTION if enabled else DISABLED_ACTION)[diagnosis]
    if failing_after == "cleared" and action in (W, X):
        return C, failing_after
    return action, failing_after


def _rows() -> list[Row]:
    rows = []
    for (master, replica), failing, recovering, uncertain, enabled in product(
        DIAGNOSES, FAILING, RECOVERING, UNCERTAIN, (True, False)
    ):
        action, failing_after = _expected(
            master, replica, failing=failing, recovering=recovering, uncertain=uncertain, enabled=enabled
        )
        rows.append(
            Row(
                master,
                replica,
                failing,
                recovering,
                uncertain,
                enabled,
                DIAGNOSES[master, replica],
                action,
                ADDRESSED.get(action),
                failing_after,
            )
        )
    return rows


TRANSITIONS = _rows()


def test_the_transition_table_is_the_whole_product() -> None:
    assert len(TRANSITIONS) == len(DIAGNOSES) * len(FAILING) * len(RECOVERING) * len(UNCERTAIN) * 2 == 5184


def _since(now: datetime, seconds: float | None) -> datetime | None:
    return None if seconds is None else ago(now, seconds)


@pytest.mark.parametrize("row", TRANSITIONS, ids=lambda row: row.id)
def test_transition(row: Row) -> None:
    failing_since = _since(T0, FAILING[row.failing])
    recorded = RecordedState(
        master=A,
        failing_since=failing_since,
        recovering_since=_since(T0, RECOVERING[row.recovering]),
        uncertain_since=_since(T0, UNCERTAIN[row.uncertain]),
    )
    facts = shard(
        MASTER_PROFILES[row.master](A, T0),
        REPLICA_PROFILES[row.replica](B, T0),
        recorded=recorded,
        policy=POLICY if row.enabled else DISABLED,
    )

    decision = decide(facts)

    assert (decision.diagnosis, decision.action, decision.member) == (row.diagnosis, row.action, row.member), (
        decision.reason
    )
    assert decision.reason
    expected_failing = {"now": T0, "kept": failing_since, "cleared": None, "none": None}[row.failing_after]
    assert decision.record.failing_since == expected_failing
    if row.action is S:
        assert decision.record.failover is not None
        assert (decision.record.failover.source, decision.record.failover.target) == (A, B)
    else:
        assert decision.record.failover is None
        assert decision.record.master == A
    assert decision.route_to == A  # nothing in this table moves routing: a started failover fences it next


# --- 3. a failover under way --------------------------------------------------------------------------

SOURCE_PROFILES: dict[str, Profile] = {
    "gone": lambda n, t: silent(n, t, role=MASTER, pod=PodState.ABSENT),
    "serving": lambda n, t: answering(n, t, role=MASTER),
    "fenced": lambda n, t: answering(n, t, role=MASTER, fenced=True),
    "silent": lambda n, t: silent(n, t, role=MASTER),
}
"""The old master (A): gone; back and serving as master; back but fenced (by the failover); silent, pod Ready."""
TARGET_PROFILES: dict[str, Profile] = {
    "ready": lambda n, t: answering(n, t, role=REPLICA, lag=0.0, lag_age=0.0),
    "behind": lambda n, t: answering(n, t, role=REPLICA, lag=3.0, lag_age=0.0),
    "suspect": lambda n, t: replace(late(n, t, role=REPLICA), lag=LagSample(0.0, ago(t, 1.5))),
    "gone": lambda n, t: silent(n, t, role=REPLICA, pod=PodState.ABSENT),
    "fenced": lambda n, t: answering(n, t, role=REPLICA, fenced=True, lag=0.0, lag_age=0.0),
}
"""The target (B): up and in sync now; up, 3 s behind; missed a poll (in sync 1.5 s ago); gone; fenced, in sync."""
WAITS = {"just": 0.5, "soon": 3.0, "long": 40.0}
"""Seconds since the last step was recorded: below one poll; a few polls; past every timeout (30 s)."""

STEP_CODES = {
    "FR": FailoverStep.FENCE_ROUTING,
    "DR": FailoverStep.DRAIN,
    "FO": FailoverStep.FENCE_OLD_MASTER,
    "PR": FailoverStep.PROMOTE,
    "RU": FailoverStep.RAISE_UIDNEXT,
    "RP": FailoverStep.REPOINT_ROUTING,
    "JR": FailoverStep.REPLAY_JOURNAL,
    "RJ": FailoverStep.REJOIN_OLD_MASTER,
    "RC": FailoverStep.RECORD,
}
"""A cell `FRx` is CONTINUE_FAILOVER with that step, addressing x: s the old master, t the target, - nobody.
`W` is WAIT, `A` RAISE_ALARM, `Xs` ABORT_FAILOVER back to the old master."""

_HEADER = "source \\ target  ready behind suspect gone fenced"
_ALL_WAITS = tuple(WAITS)

IN_PROGRESS_GRIDS: dict[tuple[str, tuple[str, ...]], str] = {
    ("none", _ALL_WAITS): """
        gone    FR- FR- FR- FR- FR-
        serving FR- FR- FR- Xs  FR-
        fenced  FR- FR- FR- Xs  FR-
        silent  FR- FR- FR- FR- FR-
    """,
    ("FenceRouting", ("just",)): """
        gone    DR- DR- DR- DR- DR-
        serving W   W   W   Xs  W
        fenced  W   W   W   Xs  W
        silent  DR- DR- DR- DR- DR-
    """,
    ("FenceRouting", ("soon",)): """
        gone    DR- DR- DR- DR- DR-
        serving DR- W   DR- Xs  DR-
        fenced  DR- W   DR- Xs  DR-
        silent  DR- DR- DR- DR- DR-
    """,
    ("FenceRouting", ("long",)): """
        gone    DR- DR- DR- DR- DR-
        serving DR- DR- DR- Xs  DR-
        fenced  DR- DR- DR- Xs  DR-
        silent  DR- DR- DR- DR- DR-
    """,
    ("Drain", _ALL_WAITS): """
        gone    FO- FO- FO- FO- FO-
        serving FOs FOs FOs Xs  FOs
        fenced  FOs FOs FOs Xs  FOs
        silent  FO- FO- FO- FO- FO-
    """,
    ("FenceOldMaster", ("just", "soon")): """
        gone    PRt PRt W   W   W
        serving FOs FOs FOs FOs FOs
        fenced  PRt PRt W   Xs  W
        silent  PRt PRt W   W   W
    """,
    ("FenceOldMaster", ("long",)): """
        gone    PRt PRt A   A   A
        serving FOs FOs FOs FOs FOs
        fenced  PRt PRt A   Xs  A
        silent  PRt PRt A   A   A
    """,
    ("Promote", ("just", "soon")): """
        gone    RUt RUt W   W   W
        serving FOs FOs FOs FOs FOs
        fenced  RUt RUt W   W   W
        silent  RUt RUt W   W   W
    """,
    ("Promote", ("long",)): """
        gone    RUt RUt A   A   A
        serving FOs FOs FOs FOs FOs
        fenced  RUt RUt A   A   A
        silent  RUt RUt A   A   A
    """,
    ("RaiseUidNext", _ALL_WAITS): """
        gone    RP- RP- RP- RP- RP-
        serving FOs FOs FOs FOs FOs
        fenced  RP- RP- RP- RP- RP-
        silent  RP- RP- RP- RP- RP-
    """,
    ("RepointRouting", ("just", "soon")): """
        gone    JRt JRt W   W   W
        serving FOs FOs FOs FOs FOs
        fenced  JRt JRt W   W   W
        silent  JRt JRt W   W   W
    """,
    ("RepointRouting", ("long",)): """
        gone    JRt JRt A   A   A
        serving FOs FOs FOs FOs FOs
        fenced  JRt JRt A   A   A
        silent  JRt JRt A   A   A
    """,
    ("ReplayJournal", _ALL_WAITS): """
        gone    RJ- RJ- RJ- RJ- RJ-
        serving FOs FOs FOs FOs FOs
        fenced  RJs RJs RJs RJs RJs
        silent  RJ- RJ- RJ- RJ- RJ-
    """,
    ("RejoinOldMaster", _ALL_WAITS): """
        gone    RC- RC- RC- RC- RC-
        serving RC- RC- RC- RC- RC-
        fenced  RC- RC- RC- RC- RC-
        silent  RC- RC- RC- RC- RC-
    """,
}
"""Unplanned failover, enabled. Row: the old master; column: the target; one grid per last step done."""

PLANNED_OVERRIDES = {
    ("FenceRouting", "long", "serving", "behind"): "Xs",
    ("FenceRouting", "long", "fenced", "behind"): "Xs",
}
"""Where a planned switchover differs: it never gives up draining, it gives up the switchover instead."""


def _in_progress_cells() -> dict[tuple[str, str, str, str], str]:
    cells = {}
    for (completed, waits), text in IN_PROGRESS_GRIDS.items():
        for (source, target), cell in grid(f"{_HEADER}\n{text}").items():
            for wait in waits:
                cells[completed, wait, source, target] = cell
    return cells


IN_PROGRESS = _in_progress_cells()


@dataclass(frozen=True)
class InProgressRow:
    completed: str
    wait: str
    source: str
    target: str
    planned: bool
    enabled: bool
    cell: str

    @property
    def id(self) -> str:
        kind = "planned" if self.planned else "unplanned"
        flag = "on" if self.enabled else "off"
        return f"{self.completed}-{self.wait}-{self.source}-{self.target}-{kind}-{flag}"


def _in_progress_rows() -> list[InProgressRow]:
    rows = []
    for (completed, wait, source, target), cell in IN_PROGRESS.items():
        for planned, enabled in product((False, True), (True, False)):
            expected = cell
            if planned:
                expected = PLANNED_OVERRIDES.get((completed, wait, source, target), cell)
            elif not enabled:
                expected = "A"  # an automatic failover halts where it is when failover is disabled
            rows.append(InProgressRow(completed, wait, source, target, planned, enabled, expected))
    return rows


IN_PROGRESS_ROWS = _in_progress_rows()


def test_the_in_progress_table_is_the_whole_product() -> None:
    steps_recorded = len(FailoverStep)  # "none" and every step but RECORD, which ends the failover
    assert len(IN_PROGRESS) == steps_recorded * len(WAITS) * len(SOURCE_PROFILES) * len(TARGET_PROFILES)
    assert len(IN_PROGRESS_ROWS) == 4 * len(IN_PROGRESS) == 2160


def _progress(completed: str, wait: float, *, planned: bool) -> FailoverProgress:
    return FailoverProgress(
        source=A,
        target=B,
        planned=planned,
        started=ago(T0, wait + 1.0),
        reason="test",
        completed=None if completed == "none" else FailoverStep(completed),
        completed_at=ago(T0, wait),
        messages_at_risk=3,
    )


def _routing_after(completed: FailoverStep | None) -> str | None:
    """Routing as the step order defines it: A until fenced, nobody until re-pointed, then B."""
    if completed is None:
        return A
    order = list(FailoverStep)
    return B if order.index(completed) >= order.index(FailoverStep.REPOINT_ROUTING) else None


@pytest.mark.parametrize("row", IN_PROGRESS_ROWS, ids=lambda row: row.id)
def test_failover_in_progress(row: InProgressRow) -> None:
    progress = _progress(row.completed, WAITS[row.wait], planned=row.planned)
    recorded = RecordedState(master=A, failing_since=ago(T0, 60), failover=progress)
    facts = shard(
        SOURCE_PROFILES[row.source](A, T0),
        TARGET_PROFILES[row.target](B, T0),
        recorded=recorded,
        policy=POLICY if row.enabled else DISABLED,
    )

    decision = decide(facts)

    assert decision.diagnosis is D.FAILOVER_IN_PROGRESS
    if row.cell in ("W", "A"):
        assert decision.action is (Action.WAIT if row.cell == "W" else Action.RAISE_ALARM), decision.reason
        assert decision.record == recorded
        assert decision.route_to == _routing_after(progress.completed)
        return
    if row.cell == "Xs":
        assert (decision.action, decision.member, decision.route_to) == (Action.ABORT_FAILOVER, A, A), decision.reason
        assert decision.record == replace(recorded, failover=None)
        return
    step, addressee = STEP_CODES[row.cell[:2]], {"s": A, "t": B, "-": None}[row.cell[2]]
    assert (decision.action, decision.step, decision.member) == (Action.CONTINUE_FAILOVER, step, addressee), (
        decision.reason
    )
    refencing = step is FailoverStep.FENCE_OLD_MASTER and progress.completed is not FailoverStep.DRAIN
    if step is FailoverStep.RECORD:
        assert decision.record.master == B
        assert decision.record.failover is None
        assert decision.record.failing_since is None
        assert decision.route_to == B
    elif refencing:
        assert decision.record == recorded  # fencing again is not progress
        assert decision.route_to == _routing_after(progress.completed)
    else:
        # The outage ends where routing reaches the new master (`lastFailover.durationSeconds` counts to it).
        serving = T0 if step is FailoverStep.REPOINT_ROUTING else progress.serving_since
        advanced = replace(progress, completed=step, completed_at=T0, serving_since=serving)
        assert decision.record.failover == advanced
        assert decision.route_to == _routing_after(step)
    assert (decision.uidnext_plan is not None) == (step is FailoverStep.RAISE_UIDNEXT)


# --- 4. switchover requests ------------------------------------------------------------------------------

SHARD_STATES: dict[str, tuple[str, str, float | None, RecordedState | None]] = {
    "healthy": ("up", "sees", None, None),
    "replica-gone": ("up", "gone", None, None),
    "replica-suspect": ("up", "suspect", None, None),
    "replica-laggy": ("up", "laggy", None, None),
    "replica-nolag": ("up", "nolag", None, None),
    "replica-fenced": ("up", "fenced", None, None),
    "master-just-down": ("gone", "sees", None, None),
    "master-down-waiting": ("gone", "sees", 2.0, None),
    "uncertain": ("silent", "sees", None, None),
    "split-brain": ("up", "rogue", None, None),
    "no-master": ("up", "sees", None, RecordedState(master=None)),
}
"""Shard states to request a switchover in: (master profile, replica profile, failingSince age, record)."""

SWITCHOVERS: list[tuple[str, str, bool, Action, str]] = [
    ("healthy", B, True, Action.DRAIN_THEN_SWITCH, "draining inbox-1-a first"),
    ("healthy", B, False, Action.DRAIN_THEN_SWITCH, "draining inbox-1-a first"),
    ("healthy", A, True, Action.REJECT_SWITCHOVER, "inbox-1-a is already the master"),
    ("healthy", "inbox-1-c", True, Action.REJECT_SWITCHOVER, "not a member of this shard"),
    ("healthy", "", True, Action.REJECT_SWITCHOVER, "not a member of this shard"),
    ("replica-gone", B, True, Action.REJECT_SWITCHOVER, "not healthy (ReplicaDown: inbox-1-b: its pod is gone"),
    ("replica-suspect", B, True, Action.REJECT_SWITCHOVER, "not healthy (ReplicaSuspect"),
    ("replica-laggy", B, True, Action.REJECT_SWITCHOVER, "not healthy (ReplicaLagging"),
    ("replica-nolag", B, True, Action.REJECT_SWITCHOVER, "has not reported its lag yet"),
    ("replica-fenced", B, True, Action.REJECT_SWITCHOVER, "not healthy (ReplicaFenced"),
    ("replica-gone", A, True, Action.REJECT_SWITCHOVER, "already the master"),
    ("replica-gone", "inbox-1-c", True, Action.REJECT_SWITCHOVER, "not a member"),
    ("master-just-down", B, True, Action.MARK_FAILING, "promoting inbox-1-b in 5.0s"),
    ("master-down-waiting", B, True, Action.REJECT_SWITCHOVER, "not healthy (MasterDown"),
    ("master-just-down", B, False, Action.REJECT_SWITCHOVER, "not healthy (MasterDown"),
    ("uncertain", B, True, Action.REJECT_SWITCHOVER, "not healthy (Uncertain"),
    ("split-brain", B, True, Action.REPAIR_SPLIT_BRAIN, "fencing the other"),
    ("split-brain", B, False, Action.REJECT_SWITCHOVER, "not healthy (SplitBrain"),
    ("no-master", B, True, Action.ELECT_MASTER, "electing inbox-1-a"),
    ("no-master", B, False, Action.ELECT_MASTER, "electing inbox-1-a"),
]
"""(state, requested member, enabled, action, a phrase of the reason). A request waits behind any action
that changes something, is weighed once only reporting is left, and is accepted only for a HEALTHY shard's
replica, even with failover disabled (a human asked)."""


@pytest.mark.parametrize(
    ("state", "wanted", "enabled", "action", "phrase"),
    SWITCHOVERS,
    ids=[f"{s}-to-{w or 'empty'}-{'on' if e else 'off'}" for s, w, e, _, _ in SWITCHOVERS],
)
def test_switchover_request(state: str, wanted: str, enabled: bool, action: Action, phrase: str) -> None:
    master, replica, failing_age, recorded = SHARD_STATES[state]
    if recorded is None:
        recorded = RecordedState(master=A, failing_since=_since(T0, failing_age))
    facts = shard(
        MASTER_PROFILES[master](A, T0),
        REPLICA_PROFILES[replica](B, T0),
        recorded=recorded,
        policy=POLICY if enabled else DISABLED,
        switchover_to=wanted,
    )

    decision = decide(facts)

    assert decision.action is action, decision.reason
    assert phrase in decision.reason
    if action is Action.DRAIN_THEN_SWITCH:
        assert decision.member == B
        assert decision.record.failover is not None
        assert decision.record.failover.planned
        assert decision.route_to == A  # routing moves only with the steps that follow


def test_a_switchover_to_a_member_is_rejected_when_no_master_is_recorded() -> None:
    facts = shard(
        MASTER_PROFILES["up"](A, T0),
        REPLICA_PROFILES["gone"](B, T0),
        recorded=RecordedState(master=None),
        switchover_to=B,
    )
    decision = decide(facts)
    assert decision.action is Action.REJECT_SWITCHOVER
    assert "no master yet" in decision.reason
