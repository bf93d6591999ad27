"""The agent's contract on a real Dovecot: authentication, safe defaults, bad inputs, supervision.

Each test starts only the members it needs; a peer that is not started is
simply unreachable, which is itself one of the bad inputs under test. The
bad inputs a backend handles on its own (a missing role, a wrong replication
secret) run on Cyrus too. Every problem /status names must be in the agent's
log in the same words.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import signal
from pathlib import Path

import aiohttp
import mailtools
import pytest
from mail_support import TOKEN, Member, PairFactory, converged, pid_alive, port_open

pytestmark = pytest.mark.mail


async def _start(member: Member) -> None:
    member.start()
    await member.wait_healthy()


def logged(member: Member) -> str:
    """Everything the agent wrote to its log (stdout), where each problem in /status must appear in the same words."""
    return member.log_path.read_text(errors="replace")


async def test_actions_need_the_token(make_pair: PairFactory) -> None:
    pair = make_pair(users=2, roles=("replica", "replica"))
    a = pair.a
    await _start(a)
    assert (await a.request("GET", "/healthz", token=None))[0] == 200
    for token in (None, "wrong-token", ""):
        for action in ("promote", "demote", "fence", "unfence"):
            status, body = await a.request("POST", f"/{action}", token=token, expect=None)
            assert status == 401, (action, token, body)
        assert (await a.request("GET", "/status", token=token, expect=None))[0] == 401
    assert (await a.status())["mode"] == "replica"  # nothing happened
    promoted = await a.action("promote")  # the peer is down, so nothing claims master
    assert promoted["status"]["mode"] == "master"
    assert a.role_file.read_text().strip() == "master"

    async with aiohttp.ClientSession() as session, session.get(a.url + "/metrics") as response:
        metrics = await response.text()
    assert 'mailshard_daemon_up{member="s1-a",shard="s1"} 1.0' in metrics
    assert 'mailshard_serving_mode{member="s1-a",mode="master",shard="s1"} 1.0' in metrics
    assert "mailshard_replication_lag_seconds" in metrics
    assert "mailshard_daemon_restarts_total" in metrics


def pair_factory(request: pytest.FixtureRequest, backend: str) -> PairFactory:
    """``make_pair`` or, for Cyrus, ``make_cyrus_pair`` (which skips when the Cyrus prefix is missing)."""
    factory: PairFactory = request.getfixturevalue("make_pair" if backend == "dovecot" else "make_cyrus_pair")
    return factory


@pytest.mark.parametrize("backend", ["dovecot", "cyrus"])
async def test_unknown_role_serves_as_fenced(backend: str, request: pytest.FixtureRequest) -> None:
    pair = pair_factory(request, backend)(users=2, roles=(None, "replica"))
    a = pair.a
    await _start(a)
    status = await a.status()
    assert status["role"] is None
    assert status["mode"] == "fenced"
    assert status["readyAsMaster"] is False
    assert "role unknown" in status["roleError"]
    assert status["roleError"] in status["errors"]
    assert status["roleError"] in logged(a)
    for port in ("imap", "lmtp", "pop3", "managesieve", "doveadm"):  # Cyrus's sync port is "doveadm" too
        assert not port_open(a.ports[port]), port
    assert (await a.action("demote"))["status"]["mode"] == "replica"
    assert a.role_file.read_text().strip() == "replica"
    assert port_open(a.ports["doveadm"])  # a replica takes replication, and no client
    assert not port_open(a.ports["imap"])
    assert not port_open(a.ports["lmtp"])


async def test_fence_survives_restart_and_blocks_promotion(make_pair: PairFactory) -> None:
    pair = make_pair(users=2)
    a = pair.a
    await _start(a)
    await a.action("fence")
    assert a.stop() == 0
    await _start(a)
    status = await a.status()
    assert status["fenced"] is True
    assert status["mode"] == "fenced"
    assert status["role"] == "master"
    assert not port_open(a.ports["imap"])
    refused = await a.action("promote", expect=409)
    assert "unfence" in refused["error"]
    assert (await a.action("unfence"))["status"]["mode"] == "master"
    assert port_open(a.ports["lmtp"])


async def test_no_promotion_while_the_peer_is_master(make_pair: PairFactory) -> None:
    pair = make_pair(users=2)
    await pair.start()
    refused = await pair.b.action("promote", expect=409)
    assert "peer reports it serves as master" in refused["error"]
    assert (await pair.b.status())["mode"] == "replica"
    _, forced = await pair.b.request("POST", "/promote?force=true")
    assert forced["status"]["mode"] == "master"
    await pair.a.wait_status(lambda s: any("split brain" in e for e in s["errors"]), what="split brain reported")


@pytest.mark.parametrize(
    ("backend", "rejection"),
    [
        ("dovecot", "doveadm server 127.0.0.1:{port} rejected our doveadm password"),
        # Cyrus's own sync_client only retries for ever: the master's agent logs in to the sync server itself.
        ("cyrus", "Cyrus sync server 127.0.0.1:{port} rejected our replication password"),
    ],
)
async def test_wrong_replication_secret_is_named(backend: str, rejection: str, request: pytest.FixtureRequest) -> None:
    pair = pair_factory(request, backend)(users=2, password_b="not-the-shared-secret")
    a, b = pair.a, pair.b
    await pair.start()
    status = await a.wait_status(
        lambda s: s["replication"]["peerDoveadm"] == "auth-failed", what="the peer's replication server rejects us"
    )
    assert status["replication"]["state"] == "failing"
    expected = rejection.format(port=b.ports["doveadm"]) + ": the shared replication secret differs"
    assert expected in status["errors"]
    assert expected in logged(a)
    if backend == "dovecot":  # the replica checks the same secret against the master's doveadm server, and says so
        seen_by_b = await b.wait_status(
            lambda s: s["replication"]["peerDoveadm"] == "auth-failed", what="master's doveadm rejects the replica"
        )
        expected_b = rejection.format(port=a.ports["doveadm"]) + ": the shared replication secret differs"
        assert expected_b in seen_by_b["errors"]
        assert expected_b in logged(b)
    await a.wait_status(lambda s: s["readyAsMaster"], what="master ready")  # it still serves its users
    await asyncio.to_thread(mailtools.deliver, a.ports["lmtp"], [(pair.users[0], mailtools.make_message("u", 1))])
    # None while a poll of the peer's mailboxes is in flight or failed: wait for a reading, not for a crash.
    await a.wait_status(lambda s: (s["replication"]["behindMailboxes"] or 0) >= 1, what="replica seen behind")
    assert (await b.status())["mailboxes"]["count"] == 0
    assert (await a.status())["readyAsMaster"] is True


async def test_bad_config_and_missing_binary_never_serve(make_pair: PairFactory) -> None:
    pair = make_pair(users=2)
    a, b = pair.a, pair.b
    a.config_path.write_text('{"shard": "s1", "member": ')
    a.start()
    status = await a.wait_status(lambda s: s["configError"] is not None, what="config error reported")
    assert "is invalid" in status["configError"]
    assert status["configError"] in logged(a)
    assert status["mode"] == "fenced"
    assert status["readyAsMaster"] is False
    assert status["daemonUp"] is False
    assert (await a.request("GET", "/healthz", token=None, expect=None))[0] == 503
    assert "cannot promote" in (await a.action("promote", expect=409))["error"]
    assert not port_open(a.ports["imap"])

    b.extra_args = ["--dovecot", "/nonexistent/dovecot"]
    b.start()
    status = await b.wait_status(lambda s: s["daemon"]["error"] is not None, what="missing binary reported")
    assert "/nonexistent/dovecot" in status["daemon"]["error"]
    assert status["daemonUp"] is False
    assert status["readyAsMaster"] is False
    assert (await b.request("GET", "/healthz", token=None, expect=None))[0] == 503


def daemons_of(member: Member) -> list[int]:
    """Processes running with this member's configuration: its daemon and the daemon's children."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if str(member.data_dir / "conf").encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
    return found


@pytest.mark.parametrize("backend", ["dovecot", "cyrus"])
async def test_sigterm_during_a_role_change_leaves_no_daemon(backend: str, request: pytest.FixtureRequest) -> None:
    """The pod is stopped while the operator promotes it: the daemon the promotion restarts must not outlive it."""
    a = pair_factory(request, backend)(users=2, roles=("replica", "replica")).a
    await _start(a)
    assert a.proc is not None
    for _ in range(3):
        promoting = asyncio.create_task(a.request("POST", "/promote", expect=None))
        await asyncio.sleep(0.1)  # the promotion is restarting the daemon now
        a.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(a.proc.wait, 30) == 0
        with contextlib.suppress(aiohttp.ClientError):
            await promoting
        await asyncio.sleep(1.0)  # a daemon started late would be up by now
        assert daemons_of(a) == [], f"left running after the agent stopped:\n{a.log_tail(30)}"
        a.set_role("replica")
        a.start()
        await a.wait_healthy()


@pytest.mark.parametrize("backend", ["dovecot", "cyrus"])
async def test_a_pid_file_from_an_earlier_pod_does_not_stop_the_daemon(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """The pid file is on the mail volume: a new pod finds the old one, naming a pid that is now someone else's.

    Seen on real pods: Dovecot 2.3 refused to start for ever ("Dovecot is already running with PID 8") because
    pid 8 of the new pod's pid namespace was alive, and the restarted master never came back as replica.
    Cyrus's master starts regardless; the agent removes the stale file for both.
    """
    a = pair_factory(request, backend)(users=2, roles=("master", "replica")).a
    await _start(a)
    assert a.stop() == 0
    pid_file = a.data_dir / "run" / "master.pid"
    unrelated = await asyncio.create_subprocess_exec("sleep", "300")
    try:
        pid_file.write_text(f"{unrelated.pid}\n")
        a.start()
        status = await a.wait_status(
            lambda s: s["daemonUp"] and s["daemon"]["restarts"] == 0, what="the daemon up at its first start"
        )
        assert status["daemon"]["pid"] != unrelated.pid
        assert unrelated.returncode is None, "an unrelated process named by a stale pid file was killed"
        assert "removing the stale pid file" in logged(a)
        assert port_open(a.ports["lmtp"])
    finally:
        unrelated.kill()
        await unrelated.wait()


@pytest.mark.parametrize("backend", ["dovecot", "cyrus"])
async def test_a_pid_file_taken_by_another_incarnation_of_the_pod_does_not_make_the_daemon_down(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """A force-deleted pod's successor starts while the old containers still run on the same volume: the old
    agent removes the pid file as stale, or the old daemon writes its own. Seen on real pods: a Cyrus master ran
    for minutes while its agent reported it down, because the file no longer named it."""
    a = pair_factory(request, backend)(users=2, roles=("master", "replica")).a
    await _start(a)
    pid_file = a.data_dir / "run" / "master.pid"
    daemon = (await a.status())["daemon"]["pid"]
    # The other incarnation's daemon, as this pid namespace sees its number: some unrelated process. (Not a
    # number like 1: whoever tears the member down kills the group its pid file names.)
    other = await asyncio.create_subprocess_exec("sleep", "300")
    try:
        pid_file.write_text(f"{other.pid}\n")
        status = await a.wait_status(
            lambda s: s["daemonUp"] and pid_file.read_text().strip() == str(daemon),
            what="the daemon up again and the pid file naming it",
            within=40,
        )
    finally:
        pid_file.write_text(f"{daemon}\n")  # whatever happened, the teardown must find the daemon
        other.kill()
        await other.wait()
    assert status["daemon"]["pid"] == daemon
    assert status["daemon"]["restarts"] == 0, "a running daemon is not restarted for its pid file"
    assert "another incarnation of this pod took it" in logged(a)
    pid_file.unlink()
    try:
        await a.wait_status(
            lambda s: s["daemonUp"] and pid_file.exists() and pid_file.read_text().strip() == str(daemon),
            what="a removed pid file written again",
            within=40,
        )
    finally:
        pid_file.write_text(f"{daemon}\n")


async def test_crashed_daemon_is_restarted(make_pair: PairFactory) -> None:
    pair = make_pair(users=2)
    a = pair.a
    await _start(a)
    first = a.daemon_pid()
    assert first is not None
    os.killpg(first, signal.SIGKILL)
    status = await a.wait_status(
        lambda s: s["daemonUp"] and s["daemon"]["restarts"] == 1 and s["daemon"]["pid"] != first,
        what="daemon restarted",
    )
    assert status["daemon"]["lastExit"] == -signal.SIGKILL
    assert not pid_alive(first)
    await asyncio.to_thread(mailtools.deliver, a.ports["lmtp"], [(pair.users[0], mailtools.make_message("c", 1))])
    async with aiohttp.ClientSession() as session, session.get(a.url + "/metrics") as response:
        assert 'mailshard_daemon_restarts_total{member="s1-a",shard="s1"} 1.0' in await response.text()
    assert TOKEN not in a.log_tail(400)


async def test_compressed_mail_replicates(make_pair: PairFactory) -> None:
    pair = make_pair(users=2, compression=True)
    a, b = pair.a, pair.b
    await pair.start()
    messages = [(user, mailtools.make_message(user, i)) for i in range(3) for user in pair.users]
    await asyncio.to_thread(mailtools.deliver, a.ports["lmtp"], messages)
    await converged(a, b)
    for member in (a, b):
        stored = [p for p in (member.data_dir / "mail").rglob("*") if p.is_file() and ",S=" in p.name]
        assert len(stored) == len(messages), member.name
        for path in stored:
            raw = path.read_bytes()
            assert raw[:2] == b"\x1f\x8b", f"{path} is not gzip"
            assert b"Body" in gzip.decompress(raw)
    one = await asyncio.to_thread(mailtools.snapshot, a.ports["imap"], pair.users, pair.passwords)
    assert all(len(snap.uids) == 3 for snap in one.values())
    await a.action("fence")
    await b.action("promote")  # read the replica over IMAP: it must decompress what it received
    assert await asyncio.to_thread(mailtools.snapshot, b.ports["imap"], pair.users, pair.passwords) == one
