"""The proxy tier on real daemons: a Dovecot proxy (`mailshard.proxy.render`) in front of real masters.

Two Dovecot masters for the routing behaviour; a Dovecot and a Cyrus master
(`mixed_tier`) for the promise that both backend kinds are served through it.

The sidecar's API watch is replaced by direct calls to `apply_table`, the part
that does the work: validate, write the route file, kick moved sessions (the
watch and the sidecar process itself, from a ConfigMap write to the next
login, are timed in `tests/integration/test_route_propagation.py`). Each
backend gets a marker mailbox per user (`at-a`, `at-b`), so a login through the
proxy shows which backend it reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import poplib
import smtplib
import socket
import statistics
import time
from dataclasses import dataclass, replace

import mailtools
import pytest
from mail_support import Member, Pair, PairFactory, Proxy, require_cyrus_pop3d

from mailshard.api.routing import RoutingTable, ShardRoute, ShardState, render_table, route_user
from mailshard.proxy.render import Endpoint
from mailshard.proxy.sidecar import Applied, apply_table

pytestmark = pytest.mark.mail

SLOTS = 16

ASCII_VECTORS = {  # the ASCII rows of tests/unit/test_routing_contract.py: login → slot of 1024
    "alice@example.com": 703,
    "Alice@Example.COM": 703,
    "bob@example.com": 364,
    "carol@example.org": 291,
    "dave@mail.example.net": 425,
    "postmaster@example.com": 609,
    "a@b.c": 1002,
    "user0001@example.com": 378,
    "user0002@example.com": 488,
}


@dataclass
class Tier:
    proxy: Proxy
    backends: dict[str, Member]
    """masterHost → the member serving it."""
    passwords: dict[str, str]
    table: RoutingTable | None = None

    def resolve(self, host: str) -> Endpoint:
        ports = self.backends[host].ports
        return Endpoint("127.0.0.1", ports["imap"], ports["pop3"], ports["lmtp"], ports["managesieve"])

    def publish(self, table: RoutingTable) -> Applied:
        applied = apply_table(
            render_table(table),
            previous=self.table,
            routes_file=self.proxy.routes_file,
            doveadm=self.proxy.doveadm,
            resolve=self.resolve,
        )
        assert applied.accepted, applied.problems
        self.table = applied.table
        return applied

    def next_table(self, **shards: ShardRoute) -> RoutingTable:
        assert self.table is not None
        return replace(self.table, version=self.table.version + 1, shards={**self.table.shards, **shards})

    def user_of(self, shard: str) -> str:
        assert self.table is not None
        return next(user for user in sorted(self.passwords) if route_user(self.table, user).shard == shard)

    def backend_of(self, user: str) -> str:
        """Which backend an IMAP login through the proxy reaches."""
        client = mailtools.imap_login(self.proxy.ports["imap"], user, self.passwords[user])
        try:
            return _marker(client)
        finally:
            client.logout()


def _marker(client: imaplib.IMAP4) -> str:
    typ, data = client.list('""', "at-*")
    assert typ == "OK", data
    names = [item.decode().rsplit(" ", 1)[-1].strip('"') for item in data if isinstance(item, bytes)]
    assert len(names) == 1, names
    return names[0].removeprefix("at-")


async def _create_marker(client: imaplib.IMAP4, mailbox: str) -> None:
    """CREATE, retried briefly: the replicator may hold the user's mailbox-list lock right after a first login."""
    answer: tuple[str, list[object]] = ("NO", [])
    for _ in range(50):
        answer = client.create(mailbox)
        if answer[0] == "OK" or any(b"ALREADYEXISTS" in item for item in answer[1] if isinstance(item, bytes)):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"CREATE {mailbox} kept failing: {answer}")


def serving(host: str) -> ShardRoute:
    return ShardRoute(state=ShardState.SERVING, master=f"m-{host}", master_host=host)


async def build_tier(proxy: Proxy, pairs: dict[str, Pair]) -> Tier:
    """Start each pair; its master serves the host of the same name; shard s1 goes to "a", s2 to "b"."""
    for pair in pairs.values():
        await pair.start()
    backends = {name: pair.a for name, pair in pairs.items()}
    passwords = next(iter(pairs.values())).passwords  # every pair has the same users
    for name, member in backends.items():
        # A Cyrus master is ready once its agent has created every user's INBOX.
        await member.wait_status(lambda s: s["readyAsMaster"], what="ready as master")
        for user, password in passwords.items():
            client = mailtools.imap_login(member.ports["imap"], user, password)
            try:
                await _create_marker(client, f"at-{name}")
            finally:
                client.logout()
    tier = Tier(proxy, backends, passwords)
    half = SLOTS // 2
    tier.publish(
        RoutingTable(version=1, slots=("s1",) * half + ("s2",) * half, shards={"s1": serving("a"), "s2": serving("b")})
    )
    return tier


@pytest.fixture
async def tier(make_pair: PairFactory, proxy: Proxy) -> Tier:
    return await build_tier(proxy, {"a": make_pair(users=10), "b": make_pair(users=10)})


@pytest.fixture
async def mixed_tier(make_pair: PairFactory, make_cyrus_pair: PairFactory, proxy: Proxy) -> Tier:
    """Shard s1 on a Dovecot pair, shard s2 on a Cyrus pair, behind the one proxy."""
    return await build_tier(proxy, {"a": make_pair(users=10), "b": make_cyrus_pair(users=10)})


def expected_backends(tier: Tier) -> dict[str, str]:
    assert tier.table is not None
    expected = {user: "a" if route_user(tier.table, user).shard == "s1" else "b" for user in tier.passwords}
    assert set(expected.values()) == {"a", "b"}, "the test users should cover both shards"
    return expected


def deliver_through_the_proxy(tier: Tier, expected: dict[str, str]) -> None:
    """One message per user through the proxy's LMTP; each lands on its user's backend only."""
    messages = [(user, mailtools.make_message(user, 1)) for user in sorted(tier.passwords)]
    assert mailtools.deliver(tier.proxy.ports["lmtp"], messages, connections=2) == len(messages)
    for user, backend in expected.items():
        for name, member in tier.backends.items():
            count, _ = mailtools.counts(member.ports["imap"], [user], tier.passwords)[user]
            assert count == (1 if name == backend else 0), (user, name)


def pop3_through_the_proxy(tier: Tier, users: list[str]) -> None:
    for user in users:
        pop = poplib.POP3("127.0.0.1", tier.proxy.ports["pop3"], timeout=10)
        try:
            pop.user(user)
            pop.pass_(tier.passwords[user])
            assert pop.stat()[0] == 1
            assert f"Subject: message 1 for {user}".encode() in b"\r\n".join(pop.retr(1)[1])
        finally:
            pop.quit()


def test_logins_and_deliveries_land_on_the_users_master(tier: Tier) -> None:
    expected = expected_backends(tier)
    assert {user: tier.backend_of(user) for user in tier.passwords} == expected
    deliver_through_the_proxy(tier, expected)
    pop3_through_the_proxy(tier, sorted(tier.passwords))


def test_a_cyrus_shard_behind_the_proxy_gets_its_users_logins_deliveries_and_sieve(mixed_tier: Tier) -> None:
    expected = expected_backends(mixed_tier)
    assert {user: mixed_tier.backend_of(user) for user in mixed_tier.passwords} == expected
    deliver_through_the_proxy(mixed_tier, expected)
    on_cyrus = next(user for user, backend in sorted(expected.items()) if backend == "b")
    sieve = mailtools.ManageSieve(mixed_tier.proxy.ports["managesieve"])
    try:
        assert sieve.login(on_cyrus, mixed_tier.passwords[on_cyrus])[0] == "OK"
        assert sieve.putscript("through-the-proxy", b'require "fileinto";\r\n')[0] == "OK"
        assert sieve.listscripts() == {"through-the-proxy": False}
    finally:
        sieve.logout()
    assert list((mixed_tier.backends["b"].data_dir / "state" / "sieve").rglob("through-the-proxy*")), "not on Cyrus"


def test_pop3_through_the_proxy_reaches_a_cyrus_shard(mixed_tier: Tier) -> None:
    require_cyrus_pop3d()
    expected = expected_backends(mixed_tier)
    deliver_through_the_proxy(mixed_tier, expected)
    pop3_through_the_proxy(mixed_tier, sorted(user for user, backend in expected.items() if backend == "b"))


class _FromAddress(imaplib.IMAP4):
    """An IMAP client connecting from a chosen loopback address: one of a user's devices."""

    def __init__(self, source: str, port: int) -> None:
        self.source = source
        super().__init__("127.0.0.1", port, timeout=10)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))


def test_one_user_may_keep_more_sessions_than_dovecots_per_ip_default_through_the_proxy(tier: Tier) -> None:
    """Every session reaches a backend from the proxy's address. Dovecot's default of 10 IMAP sessions per user
    and address must count the user's devices (here 3 addresses, 5 sessions each), not the proxy: otherwise a
    shared mailbox refuses its eleventh reader."""
    user = tier.user_of("s1")
    sessions: list[imaplib.IMAP4] = []
    try:
        for n in range(15):
            client = _FromAddress(f"127.0.0.{11 + n % 3}", tier.proxy.ports["imap"])
            sessions.append(client)
            client.login(user, tier.passwords[user])
            assert client.select("INBOX")[0] == "OK"
        assert all(client.noop()[0] == "OK" for client in sessions)
    finally:
        for client in sessions:
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                client.logout()


def test_a_route_change_moves_the_next_login(tier: Tier) -> None:
    user = tier.user_of("s1")
    password = tier.passwords[user]
    delays: list[float] = []
    for flip in range(30):
        target = "b" if flip % 2 == 0 else "a"
        started = time.monotonic()
        tier.publish(tier.next_table(s1=serving(target)))
        # The very first login after the write must already land on the new master: none may be missed.
        client = mailtools.imap_login(tier.proxy.ports["imap"], user, password)
        try:
            reached = _marker(client)
        finally:
            client.logout()
        assert reached == target, f"flip {flip}: the first login after the new table still reached {reached}"
        delays.append(time.monotonic() - started)
    delays.sort()
    p50, p99 = statistics.median(delays), delays[min(len(delays) - 1, round(0.99 * (len(delays) - 1)))]
    print(
        f"\nproxy route change → IMAP login on the new master, {len(delays)} flips, none missed: "
        f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms (apply_table with kick + a full IMAP login)"
    )
    assert p99 <= 1.0


def test_a_moved_users_open_session_is_kicked_and_reconnects_to_the_new_master(tier: Tier) -> None:
    user = tier.user_of("s1")
    other = tier.user_of("s2")
    moved = mailtools.imap_login(tier.proxy.ports["imap"], user, tier.passwords[user])
    staying = mailtools.imap_login(tier.proxy.ports["imap"], other, tier.passwords[other])
    assert _marker(moved) == "a"
    assert _marker(staying) == "b"

    applied = tier.publish(tier.next_table(s1=serving("b")))
    assert applied.kicked == (user,)
    deadline = time.monotonic() + 5
    kicked = False
    while not kicked and time.monotonic() < deadline:
        try:
            moved.noop()
        except (imaplib.IMAP4.abort, OSError):
            kicked = True
        time.sleep(0.05)
    assert kicked, "the moved user's session was not disconnected"
    assert staying.noop()[0] == "OK"
    staying.logout()
    assert tier.backend_of(user) == "b"


def _imap_refusal(port: int, user: str, password: str) -> str:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=60)
    try:
        with pytest.raises(imaplib.IMAP4.error) as refused:
            client.login(user, password)
        return str(refused.value)
    finally:
        client.shutdown()


def _pop3_refusal(port: int, user: str, password: str) -> str:
    pop = poplib.POP3("127.0.0.1", port, timeout=60)
    try:
        pop.user(user)
        with pytest.raises(poplib.error_proto) as refused:
            pop.pass_(password)
        return str(refused.value)
    finally:
        pop.close()


def _lmtp_rcpt(port: int, user: str) -> tuple[int, bytes]:
    with smtplib.LMTP("127.0.0.1", port, timeout=60) as lmtp:
        lmtp.ehlo("test")
        assert lmtp.mail("sender@example.test")[0] == 250
        return lmtp.rcpt(user)


@pytest.mark.parametrize("state", [ShardState.FENCED, ShardState.UNREADY, ShardState.MISSING])
def test_a_refused_shard_answers_temporary_errors_and_the_other_keeps_serving(tier: Tier, state: ShardState) -> None:
    fenced_user, other = tier.user_of("s1"), tier.user_of("s2")
    row = ShardRoute(state=state, master="m-a", master_host="a") if state is ShardState.FENCED else ShardRoute(state)
    tier.publish(tier.next_table(s1=row))
    ports = tier.proxy.ports

    imap = _imap_refusal(ports["imap"], fenced_user, tier.passwords[fenced_user])
    assert "[UNAVAILABLE]" in imap, imap
    pop3 = _pop3_refusal(ports["pop3"], fenced_user, tier.passwords[fenced_user])
    assert "[SYS/TEMP]" in pop3, pop3
    code, text = _lmtp_rcpt(ports["lmtp"], fenced_user)
    assert 400 <= code < 500, (code, text)
    print(f"\n{state.value} shard: IMAP {imap!r}; POP3 {pop3!r}; LMTP {code} {text!r}")

    assert tier.backend_of(other) == "b"
    assert _lmtp_rcpt(ports["lmtp"], other)[0] == 250


def test_unknown_users_and_wrong_passwords_are_refused_by_the_backend(tier: Tier) -> None:
    ports = tier.proxy.ports
    user = tier.user_of("s1")
    for login, password in ((user, "wrong"), ("nobody@example.test", "whatever")):
        answer = _imap_refusal(ports["imap"], login, password)
        assert "[AUTHENTICATIONFAILED]" in answer, answer
        answer = _pop3_refusal(ports["pop3"], login, password)
        assert "[SYS/TEMP]" not in answer, answer
        assert "ERR" in answer, answer
    code, text = _lmtp_rcpt(ports["lmtp"], "nobody@example.test")
    assert 500 <= code < 600, (code, text)


def test_a_refused_table_keeps_the_last_good_routes(tier: Tier) -> None:
    first = tier.table
    assert first is not None
    tier.publish(tier.next_table(s2=serving("b")))  # version 2, the same routes
    assert tier.table is not None
    assert tier.table.version == first.version + 1
    before = tier.proxy.routes_file.read_text()
    # Version 1 again, now sending s1's users to b: older than the table in force.
    older = apply_table(
        render_table(replace(first, shards={"s1": serving("b"), "s2": serving("b")})),
        previous=tier.table,
        routes_file=tier.proxy.routes_file,
        resolve=tier.resolve,
    )
    assert not older.accepted
    assert older.problems == (f"version {first.version} is older than the version {first.version + 1} already in use",)
    garbage = apply_table("{", previous=tier.table, routes_file=tier.proxy.routes_file, resolve=tier.resolve)
    assert not garbage.accepted
    assert garbage.table is tier.table
    assert tier.proxy.routes_file.read_text() == before
    assert tier.backend_of(tier.user_of("s1")) == "a"


def _ip(host: str) -> str:
    """h<slot> → an address naming the slot (the auth process resolves host names; these do not exist)."""
    slot = int(host.removeprefix("h"))
    return f"10.0.{slot // 256}.{slot % 256}"


def _looked_up_host(proxy: Proxy, user: str) -> str | None:
    output = proxy.doveadm(["auth", "lookup", user])
    for line in output.splitlines():
        key, _, value = line.strip().partition(":")
        if key.strip() == "host":
            return value.strip()
    return None


@pytest.mark.parametrize("slot_count", [1024, 1000])
def test_the_lua_passdb_computes_the_same_slot_as_the_operator(proxy: Proxy, slot_count: int) -> None:
    """Every slot its own shard and host, so the host the passdb answers names the slot it computed.

    1000 slots does not divide 2**64, which exercises the unsigned modulo of a negative Lua integer.
    """
    shards = {f"s{slot}": serving(f"h{slot}") for slot in range(slot_count)}
    table = RoutingTable(version=1, slots=tuple(f"s{slot}" for slot in range(slot_count)), shards=shards)
    apply_table(
        render_table(table), previous=None, routes_file=proxy.routes_file, resolve=lambda host: Endpoint(_ip(host))
    )
    logins = [f"User{n:04d}@Example.com" for n in range(60)]
    for login, slot in ASCII_VECTORS.items():
        logins.append(login)
        if slot_count == 1024:
            assert route_user(table, login).slot == slot
    for login in logins:
        assert _looked_up_host(proxy, login) == _ip(f"h{route_user(table, login).slot}"), login
