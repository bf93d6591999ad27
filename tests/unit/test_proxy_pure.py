"""The proxy tier's pure parts: the rendered configuration, the route file, and what the sidecar does with a table.

The Lua passdb itself runs only inside Dovecot; `tests/mail/test_proxy.py`
checks it on the real daemon, against the operator's own `slot_of`.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from mailshard.api.routing import RoutingTable, ShardRoute, ShardState, render_table
from mailshard.proxy.__main__ import parser
from mailshard.proxy.render import (
    CONF_FILE,
    LUA_FILE,
    Endpoint,
    ProxyPorts,
    ProxySettings,
    render_proxy,
    render_routes,
)
from mailshard.proxy.sidecar import applied_file, apply_table, config_map_text, last_applied, moved_users, proxied_users

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
    assert sorted(tmp_path.iterdir()) == [tmp_path / "applied-routing.json", routes], "no temporary file is left"


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


# --- a sidecar started again beside the route file it wrote (its container restarted, not its pod) -------------
#
# The table it had applied is still in force, and must still be what a new document is checked against: without
# it, a restarted sidecar would take an old copy of the table as if it were the first it ever saw.

RESTARTED_WRITTEN = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.UTC)


RESTARTED = RoutingTable(
    version=12,
    slots=("s1",) * 4 + ("s2",) * 4,
    shards={"s1": _serving("a.mail.svc"), "s2": _serving("b.mail.svc")},
    written_at=RESTARTED_WRITTEN,
)


def started(tmp_path: Path) -> Path:
    """A route file as a sidecar left it before stopping: RESTARTED applied."""
    routes = tmp_path / "routes.txt"
    assert apply_table(render_table(RESTARTED), previous=None, routes_file=routes).accepted
    return routes


def test_the_applied_document_is_kept_beside_the_route_file_and_read_back(tmp_path: Path) -> None:
    routes = started(tmp_path)
    assert applied_file(routes).parent == routes.parent
    assert applied_file(routes).read_text() == render_table(RESTARTED)
    assert last_applied(routes) == RESTARTED
    assert last_applied(tmp_path / "elsewhere" / "routes.txt") is None


def test_after_a_restart_an_older_table_is_still_refused(tmp_path: Path) -> None:
    routes = started(tmp_path)
    before = routes.read_text()
    restored = last_applied(routes)
    older = replace(RESTARTED, version=11, shards={**RESTARTED.shards, "s1": _serving("old.mail.svc")}, written_at=None)
    stale_copy = replace(older, written_at=RESTARTED_WRITTEN - datetime.timedelta(hours=1))
    for table in (older, stale_copy):
        applied = apply_table(render_table(table), previous=restored, routes_file=routes, doveadm=FakeDoveadm([]))
        assert not applied.accepted
        assert "older than the version 12" in applied.problems[0]
        assert applied.table == RESTARTED
    assert routes.read_text() == before
    assert last_applied(routes) == RESTARTED


def test_after_a_restart_a_recreated_table_is_taken_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    routes = started(tmp_path)
    recreated = replace(
        RESTARTED,
        version=1,
        shards={**RESTARTED.shards, "s1": _serving("new.mail.svc")},
        written_at=RESTARTED_WRITTEN + datetime.timedelta(hours=1),
    )
    with caplog.at_level(logging.WARNING, logger="mailshard.proxy"):
        applied = apply_table(render_table(recreated), previous=last_applied(routes), routes_file=routes)
    assert applied.accepted
    assert applied.table == recreated
    assert routes.read_text() == render_routes(recreated)
    assert last_applied(routes) == recreated
    assert "the table was recreated" in caplog.text


def test_after_a_restart_the_same_table_is_not_written_again(tmp_path: Path) -> None:
    routes = started(tmp_path)
    os.utime(routes, (1_000_000_000, 1_000_000_000))
    doveadm = FakeDoveadm(["someone@example.com"])
    applied = apply_table(render_table(RESTARTED), previous=last_applied(routes), routes_file=routes, doveadm=doveadm)
    assert applied.accepted
    assert applied.applied_at is None
    assert routes.stat().st_mtime == 1_000_000_000
    assert doveadm.calls == []


def test_after_a_restart_users_moved_meanwhile_are_kicked(tmp_path: Path) -> None:
    routes = started(tmp_path)
    users = _users_by_shard(RESTARTED)
    moved, staying = users["s1"], users["s2"]
    failed_over = replace(RESTARTED, version=13, shards={**RESTARTED.shards, "s1": _serving("a2.mail.svc")})
    doveadm = FakeDoveadm([moved, staying])
    applied = apply_table(render_table(failed_over), previous=last_applied(routes), routes_file=routes, doveadm=doveadm)
    assert applied.kicked == (moved,)
    assert ["proxy", "kick", moved] in doveadm.calls


@pytest.mark.parametrize("content", ["{", "", '{"format": 1}', "\udcff"])
def test_an_unreadable_applied_document_is_ignored_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    routes = tmp_path / "routes.txt"
    applied_file(routes).write_bytes(content.encode("utf-8", "surrogateescape"))
    with caplog.at_level(logging.WARNING, logger="mailshard.proxy"):
        assert last_applied(routes) is None
    assert "cannot be read" in caplog.text


def test_follow_takes_the_masters_ports() -> None:
    args = parser().parse_args(
        ["follow", "--cluster", "c", "--namespace", "n", "--backend-port", "imap=10143", "--backend-port", "lmtp=10024"]
    )
    assert dict(args.backend_port) == {"imap": 10143, "lmtp": 10024}
    for wrong in ("imaps=993", "imap=0", "imap=x", "imap"):
        with pytest.raises(SystemExit):
            parser().parse_args(["follow", "--cluster", "c", "--namespace", "n", "--backend-port", wrong])
