"""Renders the proxy tier's Dovecot configuration and the route file its passdb reads.

Why this module exists: the proxy is a Dovecot that authenticates nobody and
stores nothing; it looks each login (and each LMTP recipient) up in the
routing table and forwards the connection to the master of the user's shard.
What it forwards to is data (the route file, rewritten by the sidecar at every
table version); how it does so is configuration (rendered once). Both are
rendered here, purely: data in, text out.

**The proxy.** ``proxy=y host=… port=… nopassword=y`` from the passdb: the
login process relays the client's own credentials to the backend, which is the
one that verifies them, so a wrong password or an unknown user is refused by
the backend with its ordinary answer (IMAP ``NO [AUTHENTICATIONFAILED]``,
POP3 ``-ERR``, LMTP ``550 5.1.1``), relayed as it is. ``lmtp_proxy = yes``
makes LMTP do the same lookup per ``RCPT TO``. ``auth_cache_size = 0``: a
cached route would outlive a failover.

**The passdb: Lua, reading a flat route file, chosen by measurement.** Dovecot
2.3.19 on Debian bookworm; one user's route flipped 30 times between two hosts
of the same length (so the file keeps its size), timing the atomic write →
the first ``doveadm auth lookup`` (the lookup a login makes) answering the new
host, giving up after 3 s (``bench/proxy_passdb.py``):

=====================  =========  ======  ======
passdb                 missed     p50     p99
=====================  =========  ======  ======
passwd-file            1 of 30    998 ms  1066 ms
passwd-file + mtime    0 of 30    999 ms  1093 ms
Lua, file per lookup   0 of 30     17 ms    51 ms
=====================  =========  ======  ======

passwd-file re-reads only when the file's mtime (whole seconds) or size
changed, and stats the file at most about once a second: bumping the mtime to
a new second per write stops the misses but not the one-second delay. It also
needs a line *per user*, which the proxy cannot know. Lua
(``dovecot-auth-lua``, Lua 5.4) re-reads the route file at every lookup, so
the next login follows the new file (the 17 ms include starting doveadm). The
file holds the slot runs and overrides of the table, and the Lua code computes
the slot itself with the same function as `mailshard.api.routing.slot_of`
(pure-Lua SHA-256 of the lower-cased login, first 8 bytes big-endian, unsigned
modulo the slot count; checked against `slot_of` on the real daemon in
``tests/mail/test_proxy.py``). Through a real proxy and two real backends,
route change → IMAP login on the new master measured p50 35 ms, p99 116 ms
over 30 flips, none missed.

Lua has no Unicode tables, so a login with non-ASCII bytes (whose canonical
form needs NFC and full lower-casing) is refused with a temporary error and
logged; for ASCII logins ``string.lower`` is exactly the canonical form.

**Refusals are temporary.** A user of a fenced, unready or missing shard, or
of an unassigned slot, gets ``PASSDB_RESULT_INTERNAL_FAILURE``: IMAP answers
``NO [UNAVAILABLE]``, POP3 ``-ERR [SYS/TEMP]``, LMTP ``451 4.3.0``, so clients
and MTAs retry. Every other shard keeps serving.

**The route file** (one line each, fields separated by single spaces)::

    mailshard-routes 1
    version <table version>
    slots <slot count>
    run <first> <last> serve <host> <imap> <pop3> <lmtp> <managesieve>
    run <first> <last> refuse <reason...>
    user <canonical login> serve|refuse ...

It is written atomically (write, fsync, rename) by the sidecar; the Lua code
reads whichever whole version is in place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from mailshard.api.routing import RoutingTable, ShardRoute, ShardState
from mailshard.proxy.lua import PASSDB_LUA

CONF_FILE: Final = "dovecot.conf"
LUA_FILE: Final = "routes.lua"
ROUTES_FORMAT: Final = 1

# Services whose built-in default chroots; the proxy runs without root privileges where it can.
_CHROOTED_SERVICES: Final = (
    "anvil",
    "imap-login",
    "ipc",
    "managesieve-login",
    "pop3-login",
)


@dataclass(frozen=True)
class ProxyPorts:
    """Where the proxy listens: the standard ports in a pod, free loopback ports in tests."""

    imap: int = 143
    pop3: int = 110
    lmtp: int = 24
    managesieve: int = 4190
    imaps: int = 993
    """IMAP over implicit TLS; only with a certificate."""
    pop3s: int = 995
    """POP3 over implicit TLS; only with a certificate."""


PROTOCOLS: Final = ("imap", "pop3", "lmtp", "managesieve")
"""The protocols the proxy can serve, named as in MailCluster `spec.proxy.protocols`."""

_DOVECOT_PROTOCOL: Final = {"imap": "imap", "pop3": "pop3", "lmtp": "lmtp", "managesieve": "sieve"}


@dataclass(frozen=True)
class Endpoint:
    """Where the proxy connects for one backend host."""

    host: str
    imap: int = 143
    pop3: int = 110
    lmtp: int = 24
    managesieve: int = 4190


@dataclass(frozen=True)
class ProxySettings:
    """Everything the proxy's configuration depends on."""

    base_dir: Path
    """Sockets and the master pid; keep it short (socket paths max 107 bytes)."""
    conf_dir: Path
    """Where the rendered files are written."""
    routes_file: Path
    """The route file the sidecar writes and the Lua passdb reads."""
    user: str = "dovecot"
    group: str = "dovecot"
    """The unprivileged user the login and auth processes run as."""
    listen: str = "*"
    ports: ProxyPorts = field(default_factory=ProxyPorts)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    instance: str = "mailshard-proxy"
    protocols: tuple[str, ...] = PROTOCOLS
    """Which of `PROTOCOLS` to serve; Dovecot starts no listener of the others."""
    state_dir: Path | None = None
    """Dovecot's state_dir; unset: its default, /var/lib/dovecot, which only root may write."""


def _quote(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"configuration values cannot contain line breaks: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _listener(name: str, port: int, *, implicit_tls: bool = False) -> list[str]:
    return [f"  inet_listener {name} {{", f"    port = {port}", *(["    ssl = yes"] if implicit_tls else []), "  }"]


def render_proxy(settings: ProxySettings) -> dict[str, str]:
    """The proxy's files, keyed by file name within ``settings.conf_dir``."""
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ValueError("TLS needs both a certificate and a key")
    routes = str(settings.routes_file)
    if any(char.isspace() or char == '"' for char in routes):
        raise ValueError(f"the route file path must not contain whitespace or quotes: {routes!r}")
    lua_path = str(settings.conf_dir / LUA_FILE)
    if any(char.isspace() for char in lua_path):
        raise ValueError(f"the configuration directory must not contain whitespace: {lua_path!r}")
    tls = settings.tls_cert is not None and settings.tls_key is not None
    unknown = sorted(set(settings.protocols) - set(PROTOCOLS))
    if unknown or not settings.protocols:
        raise ValueError(f"the proxy serves some of {', '.join(PROTOCOLS)}; not {unknown or 'none'}")
    served = " ".join(_DOVECOT_PROTOCOL[name] for name in PROTOCOLS if name in settings.protocols)
    lines = [
        "# Rendered by mailshard: the proxy tier. Do not edit.",
        f"instance_name = {_quote(settings.instance)}",
        f"base_dir = {_quote(str(settings.base_dir))}",
        *([f"state_dir = {_quote(str(settings.state_dir))}"] if settings.state_dir is not None else []),
        "log_path = /dev/stderr",
        "info_log_path = /dev/stderr",
        'log_timestamp = ""',
        f"protocols = {served}",
        f"listen = {settings.listen}",
        "shutdown_clients = yes",
        "",
        f"default_internal_user = {settings.user}",
        f"default_internal_group = {settings.group}",
        f"default_login_user = {settings.user}",
        "",
    ]
    if tls:
        lines += [
            "ssl = yes",
            f"ssl_cert = <{settings.tls_cert}",
            f"ssl_key = <{settings.tls_key}",
            "ssl_min_protocol = TLSv1.2",
            "disable_plaintext_auth = yes",
        ]
    else:
        lines += ["ssl = no", "disable_plaintext_auth = no"]
    lines += [
        "auth_mechanisms = plain login",
        "# A cached route would outlive a failover.",
        "auth_cache_size = 0",
        "auth_verbose = yes",
        "",
        "# Every login and every LMTP recipient is forwarded; the backend verifies the password.",
        "passdb {",
        "  driver = lua",
        f"  args = file={lua_path} blocking=yes",
        "}",
        "userdb {",
        "  driver = static",
        "  args = allow_all_users=yes",
        "}",
        "lmtp_proxy = yes",
        "login_proxy_max_disconnect_delay = 0",
        "",
    ]
    for service in _CHROOTED_SERVICES:
        extra: list[str] = []
        if service == "imap-login":
            extra = _listener("imap", settings.ports.imap) + _listener(
                "imaps", settings.ports.imaps if tls else 0, implicit_tls=tls
            )
        elif service == "pop3-login":
            extra = _listener("pop3", settings.ports.pop3) + _listener(
                "pop3s", settings.ports.pop3s if tls else 0, implicit_tls=tls
            )
        elif service == "managesieve-login":
            extra = _listener("sieve", settings.ports.managesieve)
        lines += [f"service {service} {{", "  chroot =", *extra, "}"]
    lines += ["service lmtp {", *_listener("lmtp", settings.ports.lmtp), "}"]
    return {
        CONF_FILE: "\n".join(lines) + "\n",
        LUA_FILE: PASSDB_LUA.replace("@ROUTES@", routes),
    }


# --- the route file ---------------------------------------------------------------------------------


Resolver = Callable[[str], Endpoint]
"""masterHost → where to connect; in a cluster the host itself on the standard ports."""


def standard_endpoint(host: str) -> Endpoint:
    return Endpoint(host=host)


def _target(route: ShardRoute | None, shard: str | None, resolve: Resolver) -> str:
    if shard is None:
        return "refuse slot has no shard yet"
    if route is None:
        return f"refuse shard {shard} has no row in the table"
    if route.state is not ShardState.SERVING or route.master_host is None:
        return f"refuse shard {shard} is {route.state.value}"
    endpoint = resolve(route.master_host)
    if any(char.isspace() for char in endpoint.host) or not endpoint.host:
        raise ValueError(f"not a host name: {endpoint.host!r}")
    return f"serve {endpoint.host} {endpoint.imap} {endpoint.pop3} {endpoint.lmtp} {endpoint.managesieve}"


def render_routes(table: RoutingTable, resolve: Resolver = standard_endpoint) -> str:
    """The route file for one table (see the module docstring for the format)."""
    lines = [f"mailshard-routes {ROUTES_FORMAT}", f"version {table.version}", f"slots {table.slot_count}"]
    for first, last, shard in table.runs():
        route = table.shards.get(shard) if shard is not None else None
        lines.append(f"run {first} {last} {_target(route, shard, resolve)}")
    for user in sorted(table.overrides):
        if any(char.isspace() for char in user) or not user.isascii():
            continue  # the Lua passdb can neither parse nor canonicalise it; such logins are refused
        shard = table.overrides[user]
        lines.append(f"user {user} {_target(table.shards.get(shard), shard, resolve)}")
    return "\n".join(lines) + "\n"


def routes_of(table: RoutingTable, resolve: Resolver = standard_endpoint) -> Mapping[str, str]:
    """Shard → the target the route file gives its users; what `moved_shards` compares."""
    return {name: _target(route, name, resolve) for name, route in table.shards.items()}
