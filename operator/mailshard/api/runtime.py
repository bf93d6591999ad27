"""The runtime contract between the operator and the in-pod agent: the `shard.json` of a shard's ConfigMap.

The operator writes one `ShardRuntimeConfig` per shard into the ConfigMap
`<shard>-config` (key `shard.json`), mounted into both members at
`SHARD_CONFIG_FILE`. The agent reads it with `ShardRuntimeConfig.from_json`, and
finds out which member it runs from the `MAILSHARD_MEMBER` environment variable;
its peer is the other member.

Deliberately *not* in here:

- the role. It changes at failover without a new config: it is the pod label
  `mailshard.io/role` (the container starts with its value in
  `MAILSHARD_INITIAL_ROLE`) and later changes come through the agent's API.
- secrets. The replication password and the agent's API token are files of the
  `<shard>-replication` Secret; this file only names their paths.

One field is not derived from the spec but from failover: `superseded`, the
old masters that must never serve as master again before they are re-seeded
(see `mailshard.failover.decide`). It lives here because it must be on the
member's side before the member starts, whatever it can reach then; it is left
out of the pod template's config hash, so recording it never rolls the pods.

Unknown keys are ignored, so that a config written by a newer operator does not
stop an older agent that reads it before its pod is replaced; `schemaVersion`
changes when a field changes meaning.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from mailshard.api.constants import (
    AGENT_PORT,
    AGENT_TOKEN_KEY,
    DEFAULT_REPLICATION_PORT,
    IMAP_PORT,
    LMTP_PORT,
    MAIL_DIR,
    MANAGESIEVE_PORT,
    POP3_PORT,
    REPLICATION_PASSWORD_KEY,
    SECRETS_DIR,
)
from mailshard.api.enums import Backend, Compression, ReplicationMode


class _ContractModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
        frozen=True,
    )


class RuntimeMember(_ContractModel):
    """One member of the pair and the stable DNS name its pod is reachable at."""

    name: str = Field(min_length=1, description="Member name, e.g. inbox-1-a.")
    host: str = Field(min_length=1, description="Stable DNS name of its pod: <member>-0.<member>.<namespace>.svc.")


class RuntimePorts(_ContractModel):
    """The TCP ports each member listens on (the same on both members)."""

    imap: int = Field(default=IMAP_PORT, ge=1, le=65535)
    pop3: int = Field(default=POP3_PORT, ge=1, le=65535)
    lmtp: int = Field(default=LMTP_PORT, ge=1, le=65535)
    managesieve: int = Field(default=MANAGESIEVE_PORT, ge=1, le=65535)
    replication: int = Field(default=DEFAULT_REPLICATION_PORT, ge=1, le=65535)
    agent: int = Field(default=AGENT_PORT, ge=1, le=65535)

    @model_validator(mode="after")
    def _distinct(self) -> RuntimePorts:
        ports = [self.imap, self.pop3, self.lmtp, self.managesieve, self.replication, self.agent]
        if len(set(ports)) != len(ports):
            raise ValueError(f"the ports of a member must be distinct, got {ports}")
        return self


class RuntimeReplication(_ContractModel):
    """How the master ships changes to the replica."""

    mode: ReplicationMode = Field(
        default=ReplicationMode.ASYNC, description="Only async exists for Dovecot 2.3 and Cyrus 3.6."
    )
    max_lag_seconds: int = Field(ge=1, description="Lag beyond which automatic promotion is refused.")
    password_file: str = Field(
        default=f"{SECRETS_DIR}/{REPLICATION_PASSWORD_KEY}",
        description="File holding the password both members use to authenticate replication.",
    )


class ShardRuntimeConfig(_ContractModel):
    """Everything a member's agent needs to configure and run its backend, apart from its role."""

    schema_version: Literal[1] = Field(default=1, description="Changes when a field changes meaning.")
    shard: str = Field(min_length=1, description="Name of the MailShard.")
    namespace: str = Field(min_length=1, description="Namespace of the MailShard and its pods.")
    backend: Backend = Field(description="The IMAP server to run.")
    members: tuple[RuntimeMember, RuntimeMember] = Field(description="Both members; the agent is one of them.")
    ports: RuntimePorts = Field(default_factory=RuntimePorts, description="Ports of every member.")
    replication: RuntimeReplication = Field(description="Replication settings.")
    compression: Compression = Field(default=Compression.NONE, description="Compression of messages at rest.")
    mailboxes: int = Field(ge=1, description="How many mailboxes the shard is sized for.")
    mail_dir: str = Field(default=MAIL_DIR, description="Where the mailboxes live, on the member's volume.")
    agent_token_file: str = Field(
        default=f"{SECRETS_DIR}/{AGENT_TOKEN_KEY}",
        description="File holding the bearer token the operator presents to the agent's API.",
    )
    superseded: tuple[str, ...] = Field(
        default=(),
        description=(
            "Old masters a failover fenced, until re-seeded (`status.superseded`). A listed member's agent "
            "reads this before it serves and, if its role file still says master, starts fenced instead."
        ),
    )

    @model_validator(mode="after")
    def _distinct_members(self) -> ShardRuntimeConfig:
        first, second = self.members
        if first.name == second.name:
            raise ValueError(f"the two members must have different names, got {first.name!r} twice")
        return self

    def member(self, name: str) -> RuntimeMember:
        """The member called `name`; KeyError if the shard has no such member."""
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(f"shard {self.shard!r} has no member {name!r}; members are {[m.name for m in self.members]}")

    def peer_of(self, name: str) -> RuntimeMember:
        """The other member of the pair."""
        self.member(name)
        first, second = self.members
        return second if first.name == name else first

    def to_json(self) -> str:
        """The exact text of `shard.json`: stable key order, so identical configs hash identically.

        `superseded` is written only when it lists someone, so a shard that never
        needed it keeps the text, and the config hash, it had before the field existed.
        """
        return self.model_dump_json(indent=2, exclude=None if self.superseded else {"superseded"}) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> ShardRuntimeConfig:
        """Parse `shard.json`. Raises pydantic.ValidationError when it does not match the contract."""
        return cls.model_validate_json(text)
