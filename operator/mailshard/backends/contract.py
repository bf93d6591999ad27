"""From what the operator gives a pod to what one member's agent runs: the in-pod contract, pure.

The operator hands both members the same `shard.json` (`ShardRuntimeConfig`,
in the shard's ConfigMap) plus environment variables naming the member and
its initial role; the agent and the backend renderers work on one member's
`MemberRuntimeConfig`. This module is the one place that maps the first onto
the second, so the two contracts cannot silently disagree.

Where the users come from: a passwd-file (`user:{SCHEME}hash::::::`, one user a
line) at `users_file`, in a cluster a Secret key mounted read-only. It must be
iterable, because the Dovecot replicator walks every user.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from mailshard.api.constants import (
    DATA_PATH,
    ENV_CONFIG_FILE,
    ENV_INITIAL_ROLE,
    ENV_MEMBER,
    USERS_DIR,
    USERS_SECRET_KEY,
)
from mailshard.api.enums import Compression
from mailshard.api.runtime import ShardRuntimeConfig
from mailshard.backends.config import Backend, MemberRuntimeConfig, Peer, Ports, Role

ENV_USERS_FILE: Final = "MAILSHARD_USERS_FILE"
DEFAULT_USERS_FILE: Final = Path(USERS_DIR) / USERS_SECRET_KEY


class ContractError(ValueError):
    """The pod's environment and shard.json do not describe a member the agent can run."""


def member_config(shard: ShardRuntimeConfig, member: str, *, users_file: Path) -> MemberRuntimeConfig:
    """This member's runtime config: its ports, its peer (the other member), its mail and secrets."""
    names = [m.name for m in shard.members]
    if member not in names:
        raise ContractError(f"member {member!r} is not one of shard {shard.shard!r}'s members {names}")
    peer = next(m for m in shard.members if m.name != member)
    ports = shard.ports
    return MemberRuntimeConfig(
        shard=shard.shard,
        backend=Backend(shard.backend.value),
        member=member,
        ports=Ports(
            imap=ports.imap,
            pop3=ports.pop3,
            lmtp=ports.lmtp,
            managesieve=ports.managesieve,
            doveadm=ports.replication,
        ),
        peer=Peer(name=peer.name, host=peer.host, doveadm_port=ports.replication, agent_port=ports.agent),
        mail_dir=Path(shard.mail_dir),
        compression=shard.compression is not Compression.NONE,
        users_file=users_file,
        doveadm_password_file=Path(shard.replication.password_file),
        superseded=member in shard.superseded,
    )


@dataclass(frozen=True)
class PodContract:
    """What an agent started with no arguments in a member pod works out from its environment."""

    shard_config: Path
    member: str
    initial_role: Role | None
    data_dir: Path
    users_file: Path

    @property
    def role_file(self) -> Path:
        return self.data_dir / "role"

    @property
    def member_config_file(self) -> Path:
        return self.data_dir / "runtime.json"


def pod_contract(environment: dict[str, str]) -> PodContract:
    """Read the variables the operator's StatefulSet sets (see builders.statefulset); fail naming what is missing."""
    missing = [name for name in (ENV_CONFIG_FILE, ENV_MEMBER) if not environment.get(name)]
    if missing:
        raise ContractError(f"not started by the operator: {', '.join(missing)} unset (or pass --config)")
    raw_role = environment.get(ENV_INITIAL_ROLE) or None
    try:
        role = Role(raw_role) if raw_role else None
    except ValueError:
        raise ContractError(f"{ENV_INITIAL_ROLE}={raw_role!r} is neither master nor replica") from None
    return PodContract(
        shard_config=Path(environment[ENV_CONFIG_FILE]),
        member=environment[ENV_MEMBER],
        initial_role=role,
        data_dir=Path(DATA_PATH),
        users_file=Path(environment.get(ENV_USERS_FILE) or DEFAULT_USERS_FILE),
    )
