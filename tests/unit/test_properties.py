"""Properties over many inputs: names always fit, the members are always kept apart, merges are exact."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from unit_support import IMAGES, resolved_shard, shard_body

from mailshard.api import ConditionStatus, MailShard, ShardDefaults
from mailshard.api.constants import MAX_NAME_LENGTH
from mailshard.builders import ShardCredentials, build_replication_secret, build_shard_manifests, merge_affinity
from mailshard.builders.affinity import member_anti_affinity_term
from mailshard.builders.conditions import set_condition
from mailshard.builders.names import pod_name, volume_claim_name

pytestmark = pytest.mark.unit

DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
REVISION_HASH_SUFFIX = 11
"""`-` plus the up to 10 characters of the hash the StatefulSet controller appends to its name."""

shard_names = st.from_regex(r"\A[a-z]([-a-z0-9]{0,48}[a-z0-9])?\Z")
namespaces = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")


@settings(max_examples=200, database=None)
@given(name=shard_names, namespace=namespaces, cluster=st.none() | shard_names)
def test_every_derived_name_and_label_is_valid(name: str, namespace: str, cluster: str | None) -> None:
    spec: dict[str, Any] = {"clusterRef": {"name": cluster}} if cluster else {}
    shard = MailShard.from_resource(shard_body(name, namespace, **spec)).resolve(None)
    manifests = build_shard_manifests(shard, master=shard.members[0], images=IMAGES)
    secret = build_replication_secret(shard, ShardCredentials(replication_password="p", agent_token="t"))
    for manifest in [*manifests.in_apply_order(), secret]:
        object_name = manifest["metadata"]["name"]
        assert DNS_1123_SUBDOMAIN.match(object_name)
        if manifest["kind"] == "Service":
            assert len(object_name) <= 63
            assert DNS_1035_LABEL.match(object_name)
        for value in manifest["metadata"]["labels"].values():
            assert len(value) <= 63
            assert LABEL_VALUE.match(value)
    for statefulset in manifests.statefulsets:
        sts_name = statefulset["metadata"]["name"]
        assert len(sts_name) + REVISION_HASH_SUFFIX <= 63, "controller-revision-hash label would overflow"
        pod = pod_name(sts_name)
        assert len(pod) <= 63
        assert DNS_1123_LABEL.match(pod)
        assert DNS_1123_SUBDOMAIN.match(volume_claim_name(sts_name))
        for value in statefulset["spec"]["template"]["metadata"]["labels"].values():
            assert len(value) <= 63


@settings(database=None)
@given(name=st.from_regex(rf"\A[a-z][a-z0-9]{{{MAX_NAME_LENGTH},80}}\Z"))
def test_names_too_long_for_derived_objects_are_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        MailShard.from_resource(shard_body(name))


json_leaves = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
anti_affinity = st.fixed_dictionaries(
    {},
    optional={
        "requiredDuringSchedulingIgnoredDuringExecution": st.lists(
            st.dictionaries(st.sampled_from(["labelSelector", "topologyKey"]), json_values, max_size=2), max_size=3
        )
        | json_values,
        "preferredDuringSchedulingIgnoredDuringExecution": st.lists(json_values, max_size=2),
    },
)
user_affinities = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "nodeAffinity": json_values,
        "podAffinity": json_values,
        "podAntiAffinity": anti_affinity | json_values,
    },
)


@settings(max_examples=300, database=None)
@given(user=user_affinities, name=shard_names)
def test_members_can_never_share_a_node(user: dict[str, Any] | None, name: str) -> None:
    merged = merge_affinity(user, name)
    required = merged["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required.count(member_anti_affinity_term(name)) == 1
    for key in ("nodeAffinity", "podAffinity"):
        if user and key in user:
            assert merged[key] == user[key]
    if user and isinstance(user.get("podAntiAffinity"), dict):
        preferred = user["podAntiAffinity"].get("preferredDuringSchedulingIgnoredDuringExecution")
        if preferred is not None:
            assert merged["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] == preferred


REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"


@settings(max_examples=300, database=None)
@given(user=user_affinities, name=shard_names)
def test_preferred_spreading_is_the_heaviest_preference_and_never_a_requirement(
    user: dict[str, Any] | None, name: str
) -> None:
    merged = merge_affinity(user, name, required=False)
    anti = merged["podAntiAffinity"]
    term = member_anti_affinity_term(name)
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"].count({"weight": 100, "podAffinityTerm": term}) == 1
    # The requirements stay exactly the user's own: the operator adds none.
    user_anti = (user or {}).get("podAntiAffinity")
    user_required = user_anti.get(REQUIRED) if isinstance(user_anti, dict) else None
    assert anti.get(REQUIRED) == user_required


@settings(max_examples=50, database=None)
@given(user=user_affinities.filter(lambda a: a is None or isinstance(a, dict)))
def test_both_statefulsets_carry_the_anti_affinity_whatever_the_placement(user: dict[str, Any] | None) -> None:
    placement = {"affinity": user} if user is not None else {}
    shard = resolved_shard(placement=placement)
    manifests = build_shard_manifests(shard, master=shard.members[1], images=IMAGES)
    term = member_anti_affinity_term(shard.name)
    for statefulset in manifests.statefulsets:
        affinity = statefulset["spec"]["template"]["spec"]["affinity"]
        assert term in affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert statefulset["spec"]["template"]["metadata"]["labels"]["mailshard.io/shard"] == shard.name


optional_mailboxes = st.none() | st.integers(min_value=1, max_value=10**6)
optional_sizes = st.none() | st.sampled_from(["1Gi", "5Gi", "100G", "2Ti"])
optional_lags = st.none() | st.integers(min_value=1, max_value=86400)
optional_delays = st.none() | st.integers(min_value=0, max_value=3600)


@settings(database=None)
@given(
    mailboxes=optional_mailboxes,
    size=optional_sizes,
    lag=optional_lags,
    delay=optional_delays,
    defaults=st.builds(
        lambda mailboxes, size, lag, delay: ShardDefaults.model_validate(
            {
                "capacity": {"mailboxes": mailboxes},
                "storage": {"size": size},
                "replication": {"maxLagSeconds": lag},
                "failover": {"delaySeconds": delay},
            }
        ),
        st.integers(min_value=1, max_value=10**6),
        st.sampled_from(["3Gi", "7Gi"]),
        st.integers(min_value=1, max_value=86400),
        st.integers(min_value=0, max_value=3600),
    ),
)
def test_every_set_field_wins_and_every_unset_field_is_inherited(
    mailboxes: int | None, size: str | None, lag: int | None, delay: int | None, defaults: ShardDefaults
) -> None:
    spec: dict[str, Any] = {
        "capacity": {"mailboxes": mailboxes},
        "storage": {"size": size},
        "replication": {"maxLagSeconds": lag},
        "failover": {"delaySeconds": delay},
    }
    resolved = MailShard.from_resource(shard_body(**spec)).resolve(defaults).spec
    assert resolved.capacity.mailboxes == (mailboxes or defaults.capacity.mailboxes)
    assert resolved.storage.size == (size or defaults.storage.size)
    assert resolved.replication.max_lag_seconds == (lag or defaults.replication.max_lag_seconds)
    assert resolved.failover.delay_seconds == (delay if delay is not None else defaults.failover.delay_seconds)


@settings(database=None)
@given(st.lists(st.sampled_from(list(ConditionStatus)), min_size=1, max_size=20))
def test_transition_time_changes_exactly_when_the_status_flips(history: list[ConditionStatus]) -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    conditions: tuple[Any, ...] = ()
    previous_status = None
    previous_time = None
    for step, status in enumerate(history):
        now = start + timedelta(minutes=step)
        conditions = set_condition(
            conditions,
            condition_type="Ready",
            status=status,
            reason=f"Step{step}",
            message="",
            observed_generation=step,
            now=now,
        )
        [condition] = conditions
        if status == previous_status:
            assert condition.last_transition_time == previous_time
        else:
            assert condition.last_transition_time == now
        previous_status, previous_time = status, condition.last_transition_time
