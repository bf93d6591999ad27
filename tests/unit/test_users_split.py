"""Each shard gets exactly the users the proxies route to it: parsing the cluster's passwd-file Secrets and
splitting them with the routing table, and the Secret and mount that carry them to the members."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unit_support import resolved_shard

from mailshard.api.routing import RoutingTable, ShardRoute, ShardState, route_user
from mailshard.backends.contract import DEFAULT_USERS_FILE
from mailshard.builders.images import BackendImages
from mailshard.builders.statefulset import build_member_statefulset
from mailshard.builders.users import build_users_secret, parse_users, split_users, users_text

pytestmark = pytest.mark.unit

SERVING = ShardRoute(state=ShardState.SERVING, master="m", master_host="h")


def table(slots: tuple[str | None, ...], **overrides: str) -> RoutingTable:
    names = {s for s in slots if s is not None} | set(overrides.values())
    return RoutingTable(version=1, slots=slots, shards=dict.fromkeys(sorted(names), SERVING), overrides=overrides)


def test_parse_keeps_lines_verbatim_skips_comments_and_reports_bad_and_repeated_lines() -> None:
    first = "# the staff\n\nalice@example.com:{SHA512-CRYPT}$6$x$y::::::\nBob@Example.com:{PLAIN}pw\nno colon here\n"
    second = "bob@example.com:{PLAIN}other\n : empty user\ncarol@example.com:{PLAIN}c\n"
    parsed = parse_users([("staff", first), ("more", second)])
    assert parsed.lines == {
        "alice@example.com": "alice@example.com:{SHA512-CRYPT}$6$x$y::::::",
        "bob@example.com": "Bob@Example.com:{PLAIN}pw",  # the first line wins, as written
        "carol@example.com": "carol@example.com:{PLAIN}c",
    }
    assert parsed.problems == (
        "not passwd-file lines (user:password...), skipped: staff line 5",
        "more line 1: bob@example.com is listed again; its first line is kept",
        "not passwd-file lines (user:password...), skipped: more line 2",
    )


def test_many_bad_lines_are_counted_not_all_listed() -> None:
    parsed = parse_users([("s", "bad\n" * 12)])
    assert parsed.problems == ("not passwd-file lines (user:password...), skipped: "
                               "s line 1, s line 2, s line 3, s line 4, s line 5 and 7 more",)  # fmt: skip


@settings(max_examples=50, deadline=None)
@given(
    users=st.lists(st.from_regex(r"[a-z]{1,8}@[a-z]{1,5}\.test", fullmatch=True), min_size=1, max_size=60, unique=True),
    slots=st.lists(st.sampled_from(["a", "b", "c", None]), min_size=8, max_size=8),
)
def test_every_user_goes_to_the_shard_the_proxies_route_it_to(users: list[str], slots: list[str | None]) -> None:
    routing = table(tuple(slots))
    parsed = parse_users([("s", users_text(f"{u}:{{PLAIN}}x" for u in users))])
    split = split_users(parsed, routing)
    assert set(split.by_shard) == set(routing.shards)
    placed = {line.split(":")[0]: shard for shard, lines in split.by_shard.items() for line in lines}
    for user in users:
        shard = route_user(routing, user).shard
        assert placed.get(user) == shard  # None: not placed anywhere while its slot has no shard
    assert split.unrouted == sum(1 for u in users if route_user(routing, u).shard is None)
    for lines in split.by_shard.values():
        assert list(lines) == sorted(lines)


def test_an_override_moves_a_user_and_a_deleted_shard_is_counted() -> None:
    users = parse_users([("s", "vip@example.com:{PLAIN}x\nann@example.com:{PLAIN}y\n")])
    moved = split_users(users, table(("a",) * 8, **{"vip@example.com": "b"}))
    assert moved.by_shard == {"a": ("ann@example.com:{PLAIN}y",), "b": ("vip@example.com:{PLAIN}x",)}
    gone = RoutingTable(version=2, slots=("a",) * 8, shards={"a": SERVING}, overrides={"vip@example.com": "old"})
    assert split_users(users, gone).elsewhere == {"old": 1}


def test_the_users_secret_belongs_to_its_shard_and_lands_where_the_agent_reads() -> None:
    shard = {
        "metadata": {"name": "inbox-1", "namespace": "mail", "uid": "uid-1"},
        "spec": {"clusterRef": {"name": "demo"}},
    }
    secret = build_users_secret(shard, ["a@x:{PLAIN}1", "b@x:{PLAIN}2"])
    assert secret["metadata"]["name"] == "inbox-1-users"
    assert secret["metadata"]["ownerReferences"][0] == {
        "apiVersion": "mailshard.io/v1alpha1",
        "kind": "MailShard",
        "name": "inbox-1",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert secret["metadata"]["labels"]["app.kubernetes.io/part-of"] == "demo"
    assert base64.b64decode(secret["data"][DEFAULT_USERS_FILE.name]).decode() == "a@x:{PLAIN}1\nb@x:{PLAIN}2\n"
    statefulset = build_member_statefulset(
        resolved_shard(), "inbox-1-a", master="inbox-1-a", images=BackendImages.for_version("1")
    )
    pod = statefulset["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "users")
    assert volume["secret"]["secretName"] == "inbox-1-users"
    assert volume["secret"]["optional"] is True  # a member starts before its cluster has routed any user
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "users")
    assert Path(mount["mountPath"]) / DEFAULT_USERS_FILE.name == DEFAULT_USERS_FILE
