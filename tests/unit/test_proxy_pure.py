"""The proxy tier's pure parts: the rendered configuration, the route file, and what the sidecar does with a table.

The Lua passdb itself runs only inside Dovecot; `tests/mail/test_proxy.py`
checks it on the real daemon, against the operator's own `slot_of`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from mailshard.api.routing import RoutingTable, ShardRoute, ShardState, render_table
from mailshard.proxy.render import (
    CONF_FILE,
    LUA_FILE,
    Endpoint,
    ProxyPorts,
    ProxySettings,
    render_proxy,
    render_routes,
)
from mailshard.proxy.sidecar import apply_table, config_map_text, moved_users, proxied_users

pytestmark = pytest.mark.unit


def _settings(**changes: object) -> ProxySettings:
    base = ProxySettings(base_dir=Path("/run/p"), conf_dir=Path("/etc/p"), routes_file=Path("/var/routes/routes.txt"))
    return replace(base, **changes)  # type: ignore[arg-type]


def _serving(host: str) -> ShardRoute:
    return ShardRoute(state=ShardState.SERVING, master=f"m-{host}", master_host=host)


TABLE = RoutingTable(
    version=3,
    slots=("s1", "s1", "s2", "s2", None, "s3", "s4", "s4"),
    shards={
        "s1": _serving("a.mail.svc"),
        "s2": ShardRoute(state=ShardState.FENCED, master="m-b", master_host="b.mail.svc"),
        "s3": ShardRoute(state=ShardState.MISSING),
        "s4": _serving("d.mail.svc"),
    },
    overrides={"vip@example.com": "s4", "jürgen@example.de": "s1"},
)


def test_the_proxy_config_forwards_everything_and_caches_nothing() -> None:
    files = render_proxy(_settings(ports=ProxyPorts(imap=1143, pop3=1110, lmtp=1024, managesieve=14190)))
    conf = files[CONF_FILE]
    for line in ("auth_cache_size = 0", "lmtp_proxy = yes", "driver = lua", "protocols = imap pop3 lmtp sieve"):
        assert line in conf
    for port in (1143, 1110, 1024, 14190):
        assert f"port = {port}\n" in conf
    assert "ssl = no" in conf
    assert f"file=/etc/p/{LUA_FILE} blocking=yes" in conf
    lua = files[LUA_FILE]
    assert 'local ROUTES = "/var/routes/routes.txt"' in lua
    assert "@ROUTES@" not in lua


def test_tls_needs_both_files() -> None:
    conf = render_proxy(_settings(tls_cert=Path("/tls/tls.crt"), tls_key=Path("/tls/tls.key")))[CONF_FILE]
    assert "ssl = yes" in conf
    assert "ssl_cert = </tls/tls.crt" in conf
    assert "ssl_key = </tls/tls.key" in conf
    assert "disable_plaintext_auth = yes" in conf
    with pytest.raises(ValueError, match="both"):
        render_proxy(_settings(tls_cert=Path("/tls/tls.crt")))


def test_a_route_file_path_the_lua_code_cannot_quote_is_refused() -> None:
    with pytest.raises(ValueError, match="whitespace"):
        render_proxy(_settings(routes_file=Path('/var/my routes"')))


def test_the_route_file_serves_refuses_and_overrides() -> None:
    assert render_routes(TABLE).splitlines() == [
        "mailshard-routes 1",
        "version 3",
        "slots 8",
        "run 0 1 serve a.mail.svc 143 110 24 4190",
        "run 2 3 refuse shard s2 is fenced",
        "run 4 4 refuse slot has no shard yet",
        "run 5 5 refuse shard s3 is missing",
        "run 6 7 serve d.mail.svc 143 110 24 4190",
        # jürgen is left out: the Lua passdb refuses non-ASCII logins temporarily.
        "user vip@example.com serve d.mail.svc 143 110 24 4190",
    ]


def test_the_resolver_gives_hosts_and_ports() -> None:
    text = render_routes(TABLE, lambda host: Endpoint("127.0.0.1", 1, 2, 3, 4))
    assert "run 0 1 serve 127.0.0.1 1 2 3 4" in text.splitlines()


def test_proxied_users_reads_every_table_of_doveadm_proxy_list() -> None:
    listing = (
        "username\tproto\tsrc ip\tdest ip\tport\n"
        "alice@example.com\timap\t10.0.0.1\t10.1.0.1\t143\n"
        "bob@example.com\tpop3\t10.0.0.2\t10.1.0.2\t110\n"
        "username\tservice\tsrc-ip\tdest-ip\tdest-port\n"
        "alice@example.com\tlmtp\t10.0.0.3\t10.1.0.1\t24\n"
    )
    assert proxied_users(listing) == ["alice@example.com", "bob@example.com"]
    assert proxied_users("") == []


def _users_by_shard(table: RoutingTable) -> dict[str, str]:
    from mailshard.api.routing import route_user

    found: dict[str, str] = {}
    for n in range(200):
        user = f"user{n}@example.com"
        shard = route_user(table, user).shard
        if shard is not None and shard not in found:
            found[shard] = user
    return found


def test_moved_users_are_those_whose_target_changed() -> None:
    users = _users_by_shard(TABLE)
    failed_over = replace(TABLE, version=4, shards={**TABLE.shards, "s1": _serving("a2.mail.svc")})
    everyone = list(users.values())
    assert moved_users(everyone, TABLE, failed_over, Endpoint) == [users["s1"]]
    fenced = replace(TABLE, version=4, shards={**TABLE.shards, "s4": ShardRoute(ShardState.UNREADY)})
    assert moved_users(everyone, TABLE, fenced, Endpoint) == [users["s4"]]


class FakeDoveadm:
    def __init__(self, sessions: Sequence[str]) -> None:
        self.sessions = list(sessions)
        self.calls: list[list[str]] = []

    def __call__(self, args: Sequence[str]) -> str:
        self.calls.append(list(args))
        if list(args[-2:]) == ["proxy", "list"]:
            return "username\tproto\n" + "".join(f"{user}\timap\n" for user in self.sessions)
        return ""


def test_apply_table_writes_the_routes_and_kicks_only_moved_users(tmp_path: Path) -> None:
    routes = tmp_path / "routes.txt"
    first = apply_table(render_table(TABLE), previous=None, routes_file=routes)
    assert first.accepted
    assert first.table == TABLE
    assert routes.read_text() == render_routes(TABLE)
    assert routes.stat().st_mode & 0o777 == 0o644

    users = _users_by_shard(TABLE)
    doveadm = FakeDoveadm([users["s1"], users["s4"]])
    failed_over = replace(TABLE, version=4, shards={**TABLE.shards, "s1": _serving("a2.mail.svc")})
    applied = apply_table(render_table(failed_over), previous=TABLE, routes_file=routes, doveadm=doveadm)
    assert applied.accepted
    assert applied.kicked == (users["s1"],)
    assert ["proxy", "kick", users["s1"]] in doveadm.calls
    assert "a2.mail.svc" in routes.read_text()
    assert list(tmp_path.iterdir()) == [routes], "no temporary file is left behind"


def test_apply_table_keeps_the_last_good_table(tmp_path: Path) -> None:
    routes = tmp_path / "routes.txt"
    apply_table(render_table(TABLE), previous=None, routes_file=routes)
    before = routes.read_text()
    older = replace(TABLE, version=2, shards={**TABLE.shards, "s1": _serving("x.mail.svc")})
    for text in ("{", render_table(older), render_table(replace(older, version=3))):
        applied = apply_table(text, previous=TABLE, routes_file=routes, doveadm=FakeDoveadm([]))
        assert not applied.accepted
        assert applied.problems
        assert applied.table is TABLE
    assert routes.read_text() == before


def test_the_same_version_again_changes_nothing(tmp_path: Path) -> None:
    routes = tmp_path / "routes.txt"
    doveadm = FakeDoveadm([])
    applied = apply_table(render_table(TABLE), previous=TABLE, routes_file=routes, doveadm=doveadm)
    assert applied.accepted
    assert applied.table is TABLE
    assert not routes.exists()
    assert doveadm.calls == []


def test_config_map_text_reads_models_and_dicts() -> None:
    assert config_map_text({"data": {"routing.json": "{}"}}) == "{}"
    assert config_map_text({"data": None}) is None

    class Model:
        def __init__(self) -> None:
            self.data = {"routing.json": "x"}

    assert config_map_text(Model()) == "x"
