"""The operator's shard.json and pod environment map onto exactly the member config the agent runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from unit_support import resolved_shard

from mailshard.api import ShardRuntimeConfig
from mailshard.api.constants import SECRETS_DIR
from mailshard.backends.config import Backend, Role
from mailshard.backends.contract import ContractError, member_config, pod_contract
from mailshard.builders.images import BackendImages
from mailshard.builders.runtime_config import build_runtime_config
from mailshard.builders.shard import build_shard_manifests

pytestmark = pytest.mark.unit

USERS = Path("/etc/mailshard/users/passwd")


@pytest.mark.parametrize(("member", "peer"), [("inbox-1-a", "inbox-1-b"), ("inbox-1-b", "inbox-1-a")])
def test_each_member_gets_the_other_as_its_peer(member: str, peer: str) -> None:
    shard = build_runtime_config(resolved_shard("inbox-1", backend="cyrus", compression="zlib"))
    config = member_config(shard, member, users_file=USERS)
    assert config.member == member
    assert config.backend is Backend.CYRUS
    assert config.peer is not None
    assert config.peer.name == peer
    assert config.peer.host == f"{peer}-0.{peer}.mail.svc"
    assert config.peer.doveadm_port == shard.ports.replication == config.ports.doveadm
    assert config.peer.agent_port == shard.ports.agent
    assert config.compression is True
    assert config.doveadm_password_file == Path(f"{SECRETS_DIR}/replication-password")
    assert config.doveadm_password is None
    assert config.mail_dir == Path(shard.mail_dir)
    assert config.users_file == USERS


def test_a_member_that_is_not_in_the_shard_is_refused() -> None:
    shard = build_runtime_config(resolved_shard("inbox-1"))
    with pytest.raises(ContractError, match="'inbox-2-a' is not one of shard 'inbox-1'"):
        member_config(shard, "inbox-2-a", users_file=USERS)


def test_the_pod_environment_names_config_member_and_initial_role() -> None:
    contract = pod_contract(
        {
            "MAILSHARD_CONFIG": "/etc/mailshard/config/shard.json",
            "MAILSHARD_MEMBER": "inbox-1-b",
            "MAILSHARD_INITIAL_ROLE": "replica",
        }
    )
    assert contract.member == "inbox-1-b"
    assert contract.initial_role is Role.REPLICA
    assert contract.role_file == Path("/var/lib/mailshard/role")
    assert contract.users_file == USERS


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({}, "MAILSHARD_CONFIG, MAILSHARD_MEMBER unset"),
        ({"MAILSHARD_CONFIG": "/x", "MAILSHARD_MEMBER": "m", "MAILSHARD_INITIAL_ROLE": "boss"}, "neither master"),
    ],
)
def test_a_bad_pod_environment_says_what_is_wrong(environment: dict[str, str], message: str) -> None:
    with pytest.raises(ContractError, match=message):
        pod_contract(environment)


def test_an_unlabelled_pod_has_no_initial_role() -> None:
    contract = pod_contract({"MAILSHARD_CONFIG": "/x", "MAILSHARD_MEMBER": "m", "MAILSHARD_INITIAL_ROLE": ""})
    assert contract.initial_role is None


@pytest.mark.parametrize(
    ("superseded", "expected"),
    [
        ((), {"inbox-1-a": False, "inbox-1-b": False}),
        (("inbox-1-a",), {"inbox-1-a": True, "inbox-1-b": False}),
        (("inbox-1-a", "inbox-1-b"), {"inbox-1-a": True, "inbox-1-b": True}),
        (("inbox-9-a",), {"inbox-1-a": False, "inbox-1-b": False}),
    ],
    ids=["none", "old-master", "both", "not-a-member"],
)
def test_a_superseded_old_master_learns_it_from_shard_json(
    superseded: tuple[str, ...], expected: dict[str, bool]
) -> None:
    """What status.superseded lists reaches that member's config, through shard.json's text, and only that one."""
    written = build_runtime_config(resolved_shard("inbox-1"), superseded=superseded).to_json()
    shard = ShardRuntimeConfig.from_json(written)
    assert {m: member_config(shard, m, users_file=USERS).superseded for m in expected} == expected


def test_recording_a_superseded_member_changes_the_config_map_but_not_the_pod_template() -> None:
    shard = resolved_shard("inbox-1")
    images = BackendImages.for_version("0.0.0")
    plain = build_shard_manifests(shard, master="inbox-1-b", images=images)
    fenced = build_shard_manifests(shard, master="inbox-1-b", images=images, superseded=("inbox-1-a",))
    assert plain.config_map != fenced.config_map
    assert '"superseded": [\n    "inbox-1-a"\n  ]' in fenced.config_map["data"]["shard.json"]
    assert plain.statefulsets == fenced.statefulsets, "recording it must never roll the members"
