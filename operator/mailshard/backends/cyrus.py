"""Renders a complete, self-contained Cyrus IMAP 3.6 configuration for one member.

Why this module exists: the agent turns (runtime config, serving mode, local
paths) into the two files Cyrus reads, ``imapd.conf`` and ``cyrus.conf``, and
that mapping must be testable by value. Like ``dovecot.py`` it is pure: data
in, ``{filename: content}`` out, no I/O. The few things only the agent can do
(build the SASL user database, read secrets) take their inputs from the pure
helpers here (``sasl_users``).

The rendered daemon runs as ``master -D -C <conf>/imapd.conf -M
<conf>/cyrus.conf -p <run>/master.pid`` in the foreground, as one non-root
user (``cyrus_user``). Every path lives under the member's own directories:
``configdirectory`` is the state directory (mailbox list, seen and sync logs,
sockets), ``partition-default`` the mail directory, and every listener binds
one address, so two members can share one machine on loopback ports. Cyrus
logs only to syslog; in the image busybox ``syslogd`` forwards to stdout.

**Ports.** ``MemberRuntimeConfig.ports`` was written for Dovecot: ``imap``,
``pop3`` (``pop3d``, package ``cyrus-pop3d``), ``managesieve`` (``timsieved``)
and ``lmtp`` mean the same here, and the ``doveadm`` port is Cyrus's
replication port (``syncserver``); ``peer.doveadm_port`` is the peer's.

**Sieve.** Scripts uploaded over ManageSieve live under ``sievedir`` in the
state directory (on the member's volume); ``lmtpd`` runs the user's active
script at each delivery, and ``sync_client`` replicates scripts with the
user's mail.

**Users and authentication.** SASL ``auxprop`` with a ``sasldb`` file, built
by the agent from the same passwd-file the Dovecot backend reads (only
``{PLAIN}`` entries can be turned into sasldb secrets; see ``sasl_users``).
The replication login is an admin, ``SYNC_ADMIN``, whose password is the
shared replication secret (``doveadmPassword``); it is in ``admins`` on both
sides, ``sync_authname``/``sync_password`` on the master. Users log in as
``user@domain`` (``virtdomains: userid``). ``alwaystrue`` is never used.

**LMTP** listens on a unix socket only (``LMTP_SOCKET``; Cyrus treats a local
socket as pre-authorised). The member's LMTP port belongs to the agent's
journaling front (``mailshard.agent.front``), which relays to that socket.

**Mailbox creation.** The master's agent creates every user's INBOX, one
after the other in one admin IMAP session, before it reports ready
(``mailshard.agent.cyrustools.create_inboxes``): measured on 3.6.1, mailboxes
created at the same moment by different Cyrus processes get the same mailbox
id and share one directory on disk. ``autocreate_post: 1`` (with
``autocreate_quota: 0``, i.e. no quota; -1 would disable it) stays as the
fallback for a user added to the users file between two provisionings; the
agent's LMTP front refuses recipients who are not users at all
(``delivery_user``), since ``lmtpd`` would create an INBOX for anyone.

**How each mode refuses what it must not do** (see ``ServingMode``):

- master: IMAP, POP3, ManageSieve, and LMTP on a local socket behind the agent's front; ``sync_log: 1`` and a
  ``sync_client -r``
  (rolling replication) in ``DAEMON``, pushing every change to the peer's
  ``syncserver`` at most ``sync_repeat_interval`` (1 s) later.
- replica: only the ``syncserver`` listener; no IMAP, POP3, ManageSieve or LMTP, so every
  client is refused at connect (as with Dovecot, reads go to the master).
  No sync log and no sync client: only the master pushes.
- fenced, or a member whose role is unknown: no listener at all and no sync
  client. The agent still reads its mailboxes with local tools.

Replication is one-way and asynchronous. Promotion and demotion are a
re-render plus a restart of ``master``: Cyrus reads both files at start only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mailshard.backends.config import MemberRuntimeConfig
from mailshard.backends.dovecot import InstancePaths, ProcessIdentity
from mailshard.backends.modes import ServingMode

IMAPD_CONF = "imapd.conf"
LMTP_SOCKET = "socket/lmtp"
"""The daemon's own LMTP, a unix socket under the state directory, behind the agent's journaling front."""
CYRUS_CONF = "cyrus.conf"
SIEVE_DIR = "sieve"
"""Where ``timsieved`` keeps the users' Sieve scripts, under the state directory."""
SASLDB_FILE = "sasldb2"
SYNC_ADMIN = "mailshard-sync"
"""The admin the master's sync_client authenticates as (no domain: a global admin)."""
DEFAULT_LIBEXEC = Path("/usr/lib/cyrus/bin")


@dataclass(frozen=True)
class CyrusSettings:
    """Cyrus-specific settings that are not (yet) part of the runtime contract."""

    libexec: Path = DEFAULT_LIBEXEC
    """Where ``imapd``, ``lmtpd``, ``sync_client`` … live (Cyrus's ``service_path``)."""
    pop3: bool = True
    """Serve POP3: ``pop3d`` comes in its own package (``cyrus-pop3d``), and ``master`` exits at start when a
    service's program is missing, so an install without it (a test prefix) serves the rest without POP3."""
    sync_reconnect_maxwait: int = 2
    """Longest back-off, in seconds, of the sync client before it reconnects to the peer."""
    checkpoint_minutes: int = 30


def _value(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"configuration values cannot contain line breaks: {value!r}")
    return value


def _arg(value: str) -> str:
    if any(char.isspace() or char == '"' for char in value):
        raise ValueError(f"paths in cyrus.conf must not contain whitespace or quotes: {value!r}")
    return value


def sasl_users(users_file_text: str) -> list[tuple[str, str]]:
    """The (user, password) pairs of a passwd-file, for building the sasldb.

    Only ``{PLAIN}`` (or unprefixed) secrets can become sasldb entries: sasldb stores the secret itself.
    Blank lines and ``#`` comments are skipped; anything else is a ValueError naming the line.
    """
    users: list[tuple[str, str]] = []
    for number, line in enumerate(users_file_text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, rest = line.partition(":")
        secret = rest.split(":", 1)[0]
        if not sep or not user:
            raise ValueError(f"users file line {number}: expected user:{{PLAIN}}password::::::")
        if secret.startswith("{"):
            scheme, _, password = secret[1:].partition("}")
            if scheme.upper() != "PLAIN":
                raise ValueError(
                    f"users file line {number} ({user}): scheme {{{scheme}}} cannot be used by Cyrus, "
                    "whose sasldb needs the password itself ({PLAIN})"
                )
            secret = password
        if not secret:
            raise ValueError(f"users file line {number} ({user}): empty password")
        users.append((user.lower(), secret))
    return users


def delivery_user(address: str) -> str:
    """The user an LMTP recipient delivers to: ``Alice+lists@X.test`` -> ``alice@x.test``.

    ``lmtpd`` lower-cases recipients (``lmtp_downcase_rcpt``) and files ``user+detail`` into that user's
    folder ``detail`` (or INBOX); with ``autocreate_post`` it would create an INBOX for any address at all,
    so the agent's LMTP front refuses recipients whose user is not in the users file.
    """
    local, at, domain = address.strip().lower().rpartition("@") if "@" in address else (address.lower(), "", "")
    return local.split("+", 1)[0] + at + domain


def render_cyrus(
    config: MemberRuntimeConfig,
    mode: ServingMode,
    *,
    paths: InstancePaths,
    identity: ProcessIdentity,
    sync_password: str,
    settings: CyrusSettings = CyrusSettings(),
) -> dict[str, str]:
    """Render ``imapd.conf`` and ``cyrus.conf``, keyed by file name within ``paths.conf_dir``.

    ``sync_password`` is the shared replication secret (``doveadmPassword`` or the content of
    ``doveadmPasswordFile``); it is written to ``imapd.conf`` only on the master, which must
    therefore be readable by the daemon's user alone.
    """
    if mode is not ServingMode.FENCED and config.peer is None:
        raise ValueError("a master or replica needs a peer to replicate with")
    if not sync_password:
        raise ValueError("the replication password must not be empty")
    pushing = mode is ServingMode.MASTER
    address = config.listen_address
    imapd: list[str] = [
        f"# Rendered by mailshard for shard {config.shard}, member {config.member}, mode {mode}. Do not edit.",
        f"configdirectory: {_value(str(paths.state_dir))}",
        f"partition-default: {_value(str(paths.mail_dir))}",
        f"sievedir: {_value(str(paths.state_dir / SIEVE_DIR))}",
        f"service_path: {_value(str(settings.libexec))}",
        f"cyrus_user: {_value(identity.user)}",
        f"syslog_prefix: mailshard-{_value(config.member)}",
        "",
        "# Users log in as user@domain; one sasldb holds them and the replication admin.",
        "virtdomains: userid",
        "unixhierarchysep: yes",
        "lmtp_downcase_rcpt: yes",
        f"admins: {SYNC_ADMIN}",
        "sasl_pwcheck_method: auxprop",
        "sasl_auxprop_plugin: sasldb",
        f"sasl_sasldb_path: {_value(str(paths.conf_dir / SASLDB_FILE))}",
        "sasl_mech_list: PLAIN LOGIN",
        "allowplaintext: yes",
        "",
        "# The first LMTP delivery creates the INBOX.",
        "autocreate_post: 1",
        "autocreate_quota: 0",  # >= 0 enables autocreation; 0 = no quota
        "",
        "# Mailbox names and UIDs must be stable across replication.",
        "expunge_mode: immediate",
        "delete_mode: immediate",
        "",
        "sync_try_imap: no",
    ]
    if pushing:
        assert config.peer is not None
        imapd += [
            "# Rolling replication to the peer's syncserver.",
            "sync_log: 1",
            f"sync_host: {_value(config.peer.host)}",
            f"sync_port: {config.peer.doveadm_port}",
            f"sync_authname: {SYNC_ADMIN}",
            f"sync_password: {_value(sync_password)}",
            "sync_repeat_interval: 1",
            f"sync_reconnect_maxwait: {settings.sync_reconnect_maxwait}",
        ]
    else:
        imapd += ["sync_log: 0"]

    def cmd(name: str, *args: str) -> str:
        # Absolute, and with -C: master runs its commands from a compiled-in path and does not pass its own
        # -C on, so each would otherwise read /etc/imapd.conf.
        argv = [_arg(str(settings.libexec / name)), "-C", _arg(str(paths.conf_dir / IMAPD_CONF)), *args]
        return 'cmd="' + " ".join(argv) + '"'

    services: list[str] = []
    if pushing:
        services += [
            f'  imap {cmd("imapd")} listen="{_arg(address)}:{config.ports.imap}" prefork=0',
            f'  sieve {cmd("timsieved")} listen="{_arg(address)}:{config.ports.managesieve}" prefork=0',
            f'  lmtp {cmd("lmtpd")} listen="{_arg(str(paths.state_dir / LMTP_SOCKET))}" prefork=0',
        ]
        if settings.pop3:
            services.append(f'  pop3 {cmd("pop3d")} listen="{_arg(address)}:{config.ports.pop3}" prefork=0')
    elif mode is ServingMode.REPLICA:
        services += [f'  syncserver {cmd("sync_server")} listen="{_arg(address)}:{config.ports.doveadm}" prefork=0']
    daemons = [f"  syncclient {cmd('sync_client', '-r')}"] if pushing else []
    cyrus = [
        f"# Rendered by mailshard for shard {config.shard}, member {config.member}, mode {mode}. Do not edit.",
        "START {",
        f"  recover {cmd('ctl_cyrusdb', '-r')}",
        "}",
        "SERVICES {",
        *services,
        "}",
        "EVENTS {",
        f"  checkpoint {cmd('ctl_cyrusdb', '-c')} period={settings.checkpoint_minutes}",
        "}",
        "DAEMON {",
        *daemons,
        "}",
    ]
    return {IMAPD_CONF: "\n".join(imapd) + "\n", CYRUS_CONF: "\n".join(cyrus) + "\n"}
