"""Names and numbers shared by the custom resources, the manifests and the in-pod agent.

They live in one module so that a port, a label key or a mount path cannot drift
between the operator that writes the manifests and the agent that runs inside
them. Everything here is part of a contract: changing a value is a migration.
"""

from __future__ import annotations

from typing import Final

GROUP: Final = "mailshard.io"
"""The API group of every Mailshard custom resource."""

# --- Object names -------------------------------------------------------------------------------

MAX_NAME_LENGTH: Final = 50
"""The longest MailShard or MailCluster name we accept.

A shard `<name>` becomes the StatefulSets `<name>-a` and `<name>-b`. The StatefulSet
controller labels every pod with `controller-revision-hash: <statefulset>-<hash>`,
where the hash takes up to 11 characters, and label values stop at 63: so a
StatefulSet name must stay within 52 characters, and the shard name within 50.
The same bound keeps `<name>-master` and the pod host names `<name>-a-0` inside
the 63 characters of a DNS label.
"""

DNS_LABEL_PATTERN: Final = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""An RFC 1035 label: every Service we derive from a shard name must be one."""

# --- Labels and annotations ---------------------------------------------------------------------

LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_VERSION: Final = "app.kubernetes.io/version"

APP_NAME: Final = "mailshard"
MANAGED_BY: Final = "mailshard-operator"

LABEL_SHARD: Final = f"{GROUP}/shard"
"""The shard an object belongs to; both members' pods carry it, so anti-affinity selects on it."""
LABEL_MEMBER: Final = f"{GROUP}/member"
"""The member (`<shard>-a` or `<shard>-b`) a pod or volume belongs to. Never changes."""
LABEL_ROLE: Final = f"{GROUP}/role"
"""`master` or `replica`. Changes at failover; the `<shard>-master` Service selects on it."""

ANNOTATION_CONFIG_HASH: Final = f"{GROUP}/config-hash"
ANNOTATION_FENCED: Final = f"{GROUP}/fenced"
"""Set to "true" on a MailShard (`kubectl mailshard fence`) to fence it: the routing table marks it fenced and
proxies refuse its users with temporary errors until it is removed (`kubectl mailshard unfence`)."""
"""SHA-256 of the runtime config in the pod template, so a config change is a new revision."""

# --- Ports --------------------------------------------------------------------------------------

IMAP_PORT: Final = 143
POP3_PORT: Final = 110
LMTP_PORT: Final = 24
MANAGESIEVE_PORT: Final = 4190
AGENT_PORT: Final = 8080
"""The in-pod agent's HTTP API: health, role changes, replication lag."""
DEFAULT_REPLICATION_PORT: Final = 12345
"""Where the master's replication listener binds (doveadm for Dovecot, csync for Cyrus)."""

PORT_NAME_IMAP: Final = "imap"
PORT_NAME_POP3: Final = "pop3"
PORT_NAME_LMTP: Final = "lmtp"
PORT_NAME_MANAGESIEVE: Final = "managesieve"
PORT_NAME_AGENT: Final = "agent"
PORT_NAME_REPLICATION: Final = "replication"

AGENT_HEALTH_PATH: Final = "/healthz"

# --- Inside the pod -----------------------------------------------------------------------------

MAIL_USER_ID: Final = 10001
"""The uid and gid the mail images run as; the mail volume is group-owned by it."""

DATA_PATH: Final = "/var/lib/mailshard"
"""Where the member's persistent volume is mounted."""
MAIL_DIR: Final = f"{DATA_PATH}/mail"
"""Where the backend keeps the mailboxes, inside the persistent volume."""

CONFIG_DIR: Final = "/etc/mailshard/config"
SHARD_CONFIG_KEY: Final = "shard.json"
"""The ConfigMap key, and file name under CONFIG_DIR, of the agent's runtime config."""
SHARD_CONFIG_FILE: Final = f"{CONFIG_DIR}/{SHARD_CONFIG_KEY}"

USERS_DIR: Final = "/etc/mailshard/users"
"""Where a member mounts its shard's `<shard>-users` Secret."""
USERS_SECRET_KEY: Final = "passwd"
"""The key of that Secret (passwd-file lines), and the file name under USERS_DIR."""

SECRETS_DIR: Final = "/etc/mailshard/secrets"
REPLICATION_PASSWORD_KEY: Final = "replication-password"
AGENT_TOKEN_KEY: Final = "agent-token"

ENV_CONFIG_FILE: Final = "MAILSHARD_CONFIG"
"""Environment variable naming the runtime config file."""
ENV_MEMBER: Final = "MAILSHARD_MEMBER"
"""Environment variable naming the member this pod runs (`<shard>-a` or `<shard>-b`)."""
ENV_INITIAL_ROLE: Final = "MAILSHARD_INITIAL_ROLE"
"""The role label's value when the container started; later changes come through the agent API."""
