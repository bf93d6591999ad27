"""Renders a complete, self-contained Dovecot 2.3 configuration for one member.

Why this module exists: the agent must turn (runtime config, serving mode,
local paths) into the files Dovecot reads, and that mapping is the heart of the
data plane. It is kept pure (data in, ``{filename: content}`` out, no I/O) so
that it can be tested by value and so that a role change is nothing more than a
re-render.

The rendered daemon runs as ``dovecot -F -c <dir>/dovecot.conf`` in the
foreground, with no systemd and nothing read from ``/etc/dovecot``. Every path
(``base_dir``, ``state_dir``, mail, auth sockets) lives under the member's own
directories and every listener binds one address, so two members can share one
machine on loopback ports. It logs to stderr, which the agent forwards.

**One unprivileged user.** The daemon runs entirely as one non-root user (the
container's user in a pod; a dedicated system user in tests when the agent is
root): it is the internal user, the login user and the mail owner, and no
service chroots (chroot needs root). This is Dovecot's documented non-root
mode, and it is what a restricted pod security profile allows.

**Users.** Both the passdb and the userdb are one passwd-file
(``user:{SCHEME}hash::::::``). The replicator must be able to *iterate* users
to schedule full syncs, which passwd-file supports. In a cluster the file is a
key of a Secret mounted read-only into both members, so both sides see the same
users.

**Mailbox format: Maildir.** dsync handles Maildir and mdbox equally well, but
they differ in where UIDs live. Maildir keeps every message's UID and the
folder's UIDVALIDITY in ``dovecot-uidlist``, a small file beside the messages,
so losing or rebuilding the indexes never renumbers messages; mdbox keeps UIDs
only in its indexes, so index loss on one side means a resync with new UIDs,
which IMAP clients see as a full re-download. One file per message also makes
a replica easy to inspect and to repair by hand. The cost is one inode per
message; mdbox can be added behind the same renderer if that ever matters.
Optional ``zlib`` compression (gzip, level 6) shrinks the files on disk;
both members must agree on it, which the shared runtime config guarantees.

**How each mode refuses what it must not do** (see ``ServingMode``):

- master: IMAP, POP3 and ManageSieve listeners, and LMTP on a local socket
  behind the agent's journaling front (``mailshard.agent.front``), which owns
  the member's LMTP port; the replication plugin
  notifies the replicator after every change, which pushes it to the peer's
  doveadm server (``mail_replica = tcp:peer:port``). The master listens for
  doveadm too: the replica's agent checks the shared secret against it, and an
  agent-driven dsync (Dovecot 2.4) could pull through it.
- replica: only the doveadm listener (replication in). ``protocols = none``,
  so IMAP, POP3, LMTP and ManageSieve are not listening at all and every
  client is refused at connect. A read-only IMAP replica (ACL plugin, owner
  rights ``lr``) was tried and rejected: Dovecot creates INBOX on first access
  even when read-only, so a login on the replica before the master has
  created that user's INBOX gives the two INBOXes different mailbox GUIDs, and
  from then on every dsync of that user fails ("Remote lost mailbox GUID").
  Reads therefore go to the master; the pair is compared over IMAP by
  switching the roles over (see ``tests/mail``). The replica runs no
  replicator: only the master pushes. A symmetric setup (each side's
  replicator pointed at the other) also replicates, but measured on 2.3.19 the
  two replicators deadlock whenever they sync the same user in opposite
  directions at once (each holds its own mailbox lock and waits for the
  other's), which stalls replication for the 30 s lock timeout, e.g. whenever
  a replica starts while mail arrives. dsync is two-way regardless, so when an
  old master rejoins as a replica, the new master's first sync of each user
  still merges back anything only the old master had (such messages may get
  new UIDs on the old master).
- fenced, or a member whose role is unknown: ``protocols = none`` and no
  doveadm listener, so it accepts nothing from the network, neither clients
  nor replication; no replication plugin, so it pushes nothing. Only the local
  doveadm socket remains, for status.

Replication is asynchronous: ``replication_sync_timeout`` (synchronous commit
to the peer) makes the 2.3.19 replicator panic, so it is never rendered.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mailshard.backends.config import MemberRuntimeConfig
from mailshard.backends.modes import ReplicationStrategy, ServingMode

CONF_FILE = "dovecot.conf"
LMTP_SOCKET = "lmtp"
"""The daemon's own LMTP, a unix socket in ``base_dir``: the member's LMTP port is the agent's journaling front."""
SECRETS_FILE = "doveadm-password.conf"
TRUSTED_PROXY_NETWORKS = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "fc00::/7",
    "::1/128",
)
"""Where the proxy tier may connect from: private address space, in which pod networks live.

Why: behind the proxy every session reaches the backend from the proxy pod's address, and Dovecot allows 10
IMAP sessions per user and address (``mail_max_userip_connections``). Without the client's own address a
user's phone, laptop and webmail counted together, and a shared mailbox refused its eleventh reader (measured:
``[LIMIT] Maximum number of connections from user+IP exceeded``). A host in these networks can claim any
originating address; it changes logs and per-address limits only (the backend verifies every password).
"""
INBOUND_DOVEADM_SERVICE = "doveadm-inbound"
"""The service that owns the member's replication port: the doveadm server its peer's dsync connects to.

Not Dovecot's own ``doveadm`` service, which also runs the replicator's outgoing dsync. While the peer cannot
be reached (fenced, restarting) each of those dies at once, and Dovecot throttles a service whose processes die
before they report in ("command startup failed, throttling", doubling up to a minute). With the port in that
service, the peer's re-seed, which pulls through it, waited behind the throttle: every pull timed out and a
switchover's rejoin stalled for minutes in the e2e tier.
"""

# Services whose built-in default chroots; chroot needs root, so non-root mode blanks them all.
_CHROOTED_SERVICES = (
    "aggregator",
    "anvil",
    "director",
    "imap-login",
    "imap-urlauth-login",
    "ipc",
    "managesieve-login",
    "old-stats",
    "pop3-login",
    "submission-login",
)

_PROTOCOLS = {
    ServingMode.MASTER: "imap pop3 lmtp sieve",
    ServingMode.REPLICA: "none",
    ServingMode.FENCED: "none",
}


@dataclass(frozen=True)
class InstancePaths:
    """Where one member keeps its runtime files. All absolute."""

    conf_dir: Path
    """Where the rendered files are written."""
    base_dir: Path
    """Dovecot's ``base_dir``: sockets and the master pid. Keep it short (socket paths max 107 bytes)."""
    state_dir: Path
    """Dovecot's ``state_dir``: the replicator's state among others."""
    mail_dir: Path
    """One home directory per user below it, each with a ``Maildir``."""


@dataclass(frozen=True)
class ProcessIdentity:
    """The one non-root user (and group) that the whole daemon runs as."""

    user: str
    group: str


def _quote(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"configuration values cannot contain line breaks: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _doveadm_password(config: MemberRuntimeConfig, from_file: str | None) -> str:
    if config.doveadm_password is not None:
        return config.doveadm_password.get_secret_value()
    if not from_file:
        # Dovecot 2.3 has no generic "read this value from a file" syntax ("<file" works for ssl_* only),
        # so the caller reads doveadmPasswordFile and passes the value in.
        raise ValueError("doveadmPasswordFile is set: pass the password read from it")
    return from_file


def _listener(name: str, port: int) -> list[str]:
    return [f"  inet_listener {name} {{", f"    port = {port}", "  }"]


def render_dovecot(
    config: MemberRuntimeConfig,
    mode: ServingMode,
    *,
    paths: InstancePaths,
    identity: ProcessIdentity,
    strategy: ReplicationStrategy = ReplicationStrategy.REPLICATOR,
    doveadm_password_from_file: str | None = None,
) -> dict[str, str]:
    """Render the files one member's Dovecot needs, keyed by file name within ``paths.conf_dir``.

    The doveadm password goes to a file of its own, included by the main one, so that ``dovecot.conf``
    holds no secret and can be shown or diffed freely. When the config names a password *file*, the
    caller passes its content as ``doveadm_password_from_file`` (this function does no I/O).
    """
    if strategy is not ReplicationStrategy.REPLICATOR:  # pragma: no cover - one strategy today
        raise ValueError(f"unsupported replication strategy {strategy}")
    if mode is not ServingMode.FENCED and config.peer is None:
        raise ValueError("a master or replica needs a peer to replicate with")
    pushing = mode is ServingMode.MASTER
    receiving = mode is not ServingMode.FENCED
    users = str(config.users_file)
    mail_plugins = ["notify", "replication"] if pushing else []
    if config.compression:
        mail_plugins.append("zlib")

    lines: list[str] = [
        f"# Rendered by mailshard for shard {config.shard}, member {config.member}, mode {mode}. Do not edit.",
        f"instance_name = {_quote(f'mailshard-{config.shard}-{config.member}')}",
        f"base_dir = {_quote(str(paths.base_dir))}",
        f"state_dir = {_quote(str(paths.state_dir))}",
        "log_path = /dev/stderr",
        "info_log_path = /dev/stderr",
        'log_timestamp = ""',
        f"protocols = {_PROTOCOLS[mode]}",
        f"listen = {config.listen_address}",
        "shutdown_clients = yes",
        "",
        "# Non-root mode: one user is the internal user, the login user and the mail owner.",
        f"default_internal_user = {identity.user}",
        f"default_internal_group = {identity.group}",
        f"default_login_user = {identity.user}",
        f"mail_uid = {identity.user}",
        f"mail_gid = {identity.group}",
        "first_valid_uid = 1",
        "",
        "ssl = no",
        "disable_plaintext_auth = no",
        "auth_mechanisms = plain login",
        "# Clients come through the proxy tier, which forwards each one's own address (IMAP ID x-originating-ip).",
        "# Honoured only from these networks, so that per-client limits count clients, not the proxy pod.",
        f"login_trusted_networks = {' '.join(TRUSTED_PROXY_NETWORKS)}",
        "",
        f"mail_home = {_quote(str(paths.mail_dir) + '/%Lu')}",
        "mail_location = maildir:~/Maildir",
        f"mail_plugins = {' '.join(mail_plugins)}".rstrip(),
        "",
        "passdb {",
        "  driver = passwd-file",
        f"  args = username_format=%Lu {users}",
        "}",
        "userdb {",
        "  driver = passwd-file",
        f"  args = username_format=%Lu {users}",
        "}",
        "",
    ]
    for service in _CHROOTED_SERVICES:
        extra: list[str] = []
        if service == "imap-login":
            extra = _listener("imap", config.ports.imap) + _listener("imaps", 0)
        elif service == "pop3-login":
            extra = _listener("pop3", config.ports.pop3) + _listener("pop3s", 0)
        elif service == "managesieve-login":
            extra = _listener("sieve", config.ports.managesieve)
        elif service == "aggregator":
            extra = [
                "  fifo_listener replication-notify-fifo {",
                f"    user = {identity.user}",
                "    mode = 0600",
                "  }",
                "  unix_listener replication-notify {",
                f"    user = {identity.user}",
                "    mode = 0600",
                "  }",
            ]
        lines += [f"service {service} {{", "  chroot =", *extra, "}"]
    # No LMTP port: the agent's journaling front owns it (``mailshard.agent.front``) and relays to this socket.
    lines += [
        "service lmtp {",
        f"  unix_listener {LMTP_SOCKET} {{",
        f"    user = {identity.user}",
        "    mode = 0600",
        "  }",
        "}",
    ]
    lines += [
        "protocol lmtp {",
        "  mail_plugins = $mail_plugins sieve",
        "}",
        "plugin {",
        "  sieve = file:~/sieve;active=~/.dovecot.sieve",
        "}",
    ]

    # doveadm: always the local socket (status, and the replicator's outgoing dsync); over TCP only while
    # replication may flow in, from a service of its own (see INBOUND_DOVEADM_SERVICE).
    lines += ["service doveadm {", "}"]
    if receiving:
        lines += [
            f"service {INBOUND_DOVEADM_SERVICE} {{",
            "  executable = doveadm-server",
            "  extra_groups = $default_internal_group",
            # As Dovecot's own doveadm service: a doveadm server takes one client per process. A new service
            # defaults to 1,000 per process, and concurrent dsyncs failed ("doveadm server can handle only a
            # single client"), so replication stalled (e2e tier).
            "  client_limit = 1",
            "  service_count = 1",
            "  inet_listener {",
            f"    port = {config.ports.doveadm}",
            "  }",
            "}",
        ]
    secrets = str(paths.conf_dir / SECRETS_FILE)
    if any(char.isspace() for char in secrets):
        raise ValueError(f"the configuration directory must not contain whitespace: {secrets!r}")
    lines += [f"!include {secrets}"]

    if pushing:
        assert config.peer is not None
        lines += [
            "",
            "# Asynchronous replication: every change is pushed to the peer by the replicator.",
            "service replicator {",
            "  process_min_avail = 1",
            "  unix_listener replicator-doveadm {",
            f"    user = {identity.user}",
            "    mode = 0600",
            "  }",
            "}",
            "replication_max_conns = 10",
            "replication_full_sync_interval = 1 hours",
            "plugin {",
            f"  mail_replica = tcp:{config.peer.host}:{config.peer.doveadm_port}",
            "}",
        ]
    if config.compression:
        lines += ["", "plugin {", "  zlib_save = gz", "  zlib_save_level = 6", "}"]

    password = _doveadm_password(config, doveadm_password_from_file)
    return {
        CONF_FILE: "\n".join(lines) + "\n",
        SECRETS_FILE: f"doveadm_password = {_quote(password)}\n",
    }
