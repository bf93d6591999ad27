"""Shared helpers and fixtures of the mail tier (imported by name: a module called conftest would clash across tiers).

Every member is started exactly as the image will start it, ``python -m
mailshard.agent ...``, as a subprocess in its own process group, with its data,
sockets and configuration under one temporary directory and every port on
127.0.0.1. Finalizers stop each agent with SIGTERM, then kill its process group
and the daemon's (the agent starts Dovecot in a session of its own), so nothing
outlives a test even when it fails. Agent logs are attached to failing reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mailshard.agent import cyruspreload
from mailshard_harness import local_proxy, mailflow
from mailshard_harness.local_proxy import LocalProxy
from mailshard_harness.testing import free_loopback_ports

REPO = Path(__file__).resolve().parents[2]
TOKEN = "mail-tier-token"
DOVEADM_PASSWORD = "mail-tier-replication-secret"


def _die_with_parent() -> None:
    """In the agent's child process: get SIGTERM if pytest dies, so the agent stops its daemon too."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _skip_reason() -> str | None:
    if shutil.which("dovecot") is None or shutil.which("doveadm") is None:
        return "dovecot is not installed (run .ci/install-mail-deps)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("vmail")
        except KeyError:
            return "running as root needs the unprivileged 'vmail' user (run .ci/install-mail-deps)"
    return None


@pytest.fixture
def dovecot_installed() -> None:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)


def free_ports(count: int) -> list[int]:
    return free_loopback_ports(count)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


@dataclass
class Member:
    """One member of a pair: its files, ports and (when running) its agent process."""

    name: str
    root: Path
    ports: dict[str, int]
    config: dict[str, Any]
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    exit_codes: list[int] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.root / "runtime.json"

    @property
    def role_file(self) -> Path:
        return self.root / "data" / "role"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "agent.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['agent']}"

    def daemon_pid(self) -> int | None:
        try:
            return int((self.data_dir / "run" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def doveadm_json(self, *args: str) -> list[dict[str, str]]:
        """Run doveadm against this member's own store, as the mail user, and parse its JSON output."""
        return mailflow.doveadm_json(self.data_dir / "conf" / "dovecot.conf", *args)

    def message_ids(self, user: str) -> list[str]:
        """The Message-ID of every message of the user, in every mailbox (duplicates kept)."""
        return [row["hdr.message-id"] for row in self.doveadm_json("fetch", "-u", user, "hdr.message-id", "ALL")]

    def mailbox_counts(self) -> dict[tuple[str, str], tuple[int, int, int]]:
        """(UIDVALIDITY, UIDNEXT, MESSAGES) per (user, mailbox), straight from this member's doveadm."""
        rows = self.doveadm_json("mailbox", "status", "-A", "uidvalidity uidnext messages", "*")
        return {
            (row["username"], row["mailbox"]): (int(row["uidvalidity"]), int(row["uidnext"]), int(row["messages"]))
            for row in rows
        }

    def write_config(self) -> None:
        self.config_path.write_text(json.dumps(self.config, indent=2))

    def set_role(self, role: str | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if role is None:
            self.role_file.unlink(missing_ok=True)
        else:
            self.role_file.write_text(role + "\n")

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o755)
        argv = [
            sys.executable,
            "-m",
            "mailshard.agent",
            "--config",
            str(self.config_path),
            "--role-file",
            str(self.role_file),
            "--data-dir",
            str(self.data_dir),
            "--listen",
            f"127.0.0.1:{self.ports['agent']}",
            "--token-file",
            str(self.root.parent / "token"),
            "--poll-interval",
            "0.5",
            *self.extra_args,
        ]
        env = dict(os.environ, PYTHONPATH=str(REPO / "operator"), PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads are spawning processes here
            )

    def stop(self, *, grace: float = 25.0) -> int | None:
        """SIGTERM the agent (it stops its daemon), then make sure both process groups are gone."""
        daemon = self.daemon_pid()
        code = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(grace)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait() if code is None else code
            self.exit_codes.append(code)
        if daemon is not None and pid_alive(daemon):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(daemon, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while pid_alive(daemon) and time.monotonic() < deadline:
                time.sleep(0.05)
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL the agent and the daemon at once, as a pod dies: nothing is stopped cleanly."""
        daemon = self.daemon_pid()
        for group in (self.proc.pid if self.proc is not None else None, daemon):
            if group is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, signal.SIGKILL)
        if self.proc is not None:
            self.exit_codes.append(self.proc.wait())
            self.proc = None
        deadline = time.monotonic() + 5
        while daemon is not None and pid_alive(daemon) and time.monotonic() < deadline:
            time.sleep(0.02)

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- HTTP ------------------------------------------------------------------------------------------------

    async def request(
        self, method: str, path: str, *, token: str | None = TOKEN, expect: int | None = 200, body: Any = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, self.url + path, headers=headers, json=body, timeout=aiohttp.ClientTimeout(total=60)
            ) as response,
        ):
            body = await response.json(content_type=None) if response.content_type == "application/json" else None
            if expect is not None:
                assert response.status == expect, f"{method} {path} on {self.name}: {response.status} {body}"
            return response.status, body

    async def status(self) -> dict[str, Any]:
        _, body = await self.request("GET", "/status")
        assert isinstance(body, dict)
        return body

    async def action(self, name: str, *, expect: int = 200) -> dict[str, Any]:
        _, body = await self.request("POST", f"/{name}", expect=expect)
        assert isinstance(body, dict)
        return body

    async def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], *, within: float = 30.0, what: str = ""
    ) -> dict[str, Any]:
        deadline = time.monotonic() + within
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, AssertionError):
                last = await self.status()
                if predicate(last):
                    return last
            await asyncio.sleep(0.1)
        summary = {k: v for k, v in (last or {}).items() if k != "mailboxes"}
        raise AssertionError(f"{self.name}: timed out after {within}s waiting for {what}; last status {summary}")

    async def wait_healthy(self, *, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"agent {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, AssertionError):
                status, _ = await self.request("GET", "/healthz", token=None, expect=None)
                if status == 200:
                    return
            await asyncio.sleep(0.1)
        raise AssertionError(f"agent {self.name} not healthy within {within}s:\n{self.log_tail()}")


@dataclass
class Pair:
    a: Member
    b: Member
    passwords: dict[str, str]

    @property
    def users(self) -> list[str]:
        return sorted(self.passwords)

    async def start(self) -> None:
        self.a.start()
        self.b.start()
        await asyncio.gather(self.a.wait_healthy(), self.b.wait_healthy())


async def post_uidnext(member: Member, body: Any, *, token: str | None = TOKEN) -> tuple[int, Any]:
    """``POST /uidnext`` (a failover's RaiseUidNext step) with any body; returns the status and the JSON answer."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{member.url}/uidnext", json=body, headers=headers) as response,
    ):
        return response.status, await response.json(content_type=None)


OLD_UIDVALIDITY = 1_700_000_123
"""A UIDVALIDITY the old master gave a mailbox, well below the time-based ones both daemons give a new mailbox now:
were a new mailbox replicated before its UIDVALIDITY is set, replication would keep the higher, fresh one."""


def creation_request(inbox_of: str, archive_of: str, known: str, known_validity: int) -> dict[str, Any]:
    """A ``POST /uidnext`` body asking a master to create an INBOX (next UID 10,002) and an Archive folder (next
    UID 40) it lacks, and an INBOX it has (``known``'s) under another UIDVALIDITY than its own."""
    return {
        "floors": {},
        "create": {
            f"{inbox_of}/INBOX": {"uidvalidity": OLD_UIDVALIDITY, "uidnext": 10_002},
            f"{archive_of}/Archive": {"uidvalidity": OLD_UIDVALIDITY + 7, "uidnext": 40},
            f"{known}/INBOX": {"uidvalidity": known_validity + 1, "uidnext": 90},
        },
    }


def not_kept(answer: dict[str, Any]) -> list[tuple[str, int, str]]:
    """(mailbox, its UIDVALIDITY, why) of each mailbox a ``POST /uidnext`` answer says lacks the one asked for."""
    return [(row["mailbox"], row["actual"], row["why"]) for row in answer["uidvalidityNotKept"]]


REPLICATED_FIELDS = ("user", "mailbox", "uidvalidity", "uidnext", "messages", "unseen")


def summaries(status: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The per-mailbox facts dsync makes equal on both sides (HIGHESTMODSEQ is per server)."""
    return [tuple(row[name] for name in REPLICATED_FIELDS) for row in status["mailboxes"]["summary"]]


async def converged(master: Member, replica: Member, *, within: float = 60.0) -> float:
    """Wait until both members report identical mailbox summaries; return the seconds it took."""
    started = time.monotonic()
    deadline = started + within
    while time.monotonic() < deadline:
        first, second = await asyncio.gather(master.status(), replica.status())
        if first["daemonUp"] and second["daemonUp"] and summaries(first) == summaries(second) and summaries(first):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"{master.name} and {replica.name} did not converge within {within}s")


PairFactory = Callable[..., Pair]


@pytest.fixture
def make_pair(dovecot_installed: None, request: pytest.FixtureRequest) -> Iterator[PairFactory]:
    """Build (not start) master/replica pairs; every process is cleaned up at the end of the test."""
    base = Path(tempfile.mkdtemp(prefix="ms-"))  # short: Dovecot socket paths must stay under 108 bytes
    base.chmod(0o755)
    members: list[Member] = []

    def factory(
        *,
        users: int = 10,
        compression: bool = False,
        password_b: str = DOVEADM_PASSWORD,
        roles: tuple[str | None, str | None] = ("master", "replica"),
    ) -> Pair:
        index = len(members) // 2
        pair_dir = base / f"pair{index}"
        pair_dir.mkdir()
        pair_dir.chmod(0o755)
        (pair_dir / "token").write_text(TOKEN + "\n")
        passwords = {f"user{n:02d}@example.test": f"secret-{n:02d}" for n in range(1, users + 1)}
        users_file = pair_dir / "users"
        users_file.write_text("".join(f"{user}:{{PLAIN}}{pw}::::::\n" for user, pw in passwords.items()))
        users_file.chmod(0o644)
        names = ("a", "b")
        port_sets = [
            dict(zip(("imap", "pop3", "lmtp", "managesieve", "doveadm", "agent"), free_ports(6), strict=True))
            for _ in names
        ]
        pair_members = []
        for i, name in enumerate(names):
            other = port_sets[1 - i]
            root = pair_dir / name
            root.mkdir()
            root.chmod(0o755)
            config = {
                "shard": "s1",
                "backend": "dovecot",
                "member": f"s1-{name}",
                "listenAddress": "127.0.0.1",
                "ports": {k: v for k, v in port_sets[i].items() if k != "agent"},
                "peer": {
                    "name": f"s1-{names[1 - i]}",
                    "host": "127.0.0.1",
                    "doveadmPort": other["doveadm"],
                    "agentPort": other["agent"],
                },
                "compression": compression,
                "usersFile": str(users_file),
            }
            if name == "a":
                config["doveadmPassword"] = DOVEADM_PASSWORD
            else:  # b reads it from a file, as from a mounted Secret
                (root / "doveadm-password").write_text(password_b + "\n")
                config["doveadmPasswordFile"] = str(root / "doveadm-password")
            member = Member(name, root, port_sets[i], config)
            member.write_config()
            member.set_role(roles[i])
            pair_members.append(member)
            members.append(member)
        return Pair(pair_members[0], pair_members[1], passwords)

    yield factory

    for member in members:
        member.stop()
        request.node.add_report_section("teardown", f"agent {member.name} log", member.log_tail())
    shutil.rmtree(base, ignore_errors=True)


# --- the proxy tier ----------------------------------------------------------------------------------


Proxy = LocalProxy
"""A real Dovecot proxy (``mailshard.proxy.render``) on loopback ports, reading ``routes_file``."""


@pytest.fixture
def proxy(dovecot_installed: None, request: pytest.FixtureRequest) -> Iterator[Proxy]:
    """A started proxy with no route file yet (every login is refused temporarily until one is written)."""
    problem = local_proxy.missing()
    if problem is not None:
        pytest.skip(problem)
    root = Path(tempfile.mkdtemp(prefix="mp-"))
    started = LocalProxy.start(root)
    yield started
    started.stop()
    request.node.add_report_section("teardown", "proxy log", started.log_tail())
    shutil.rmtree(root, ignore_errors=True)


def cyrus_root() -> Path:
    """Where ``.ci/install-cyrus-prefix`` extracts Cyrus (the same defaults as the script)."""
    if os.environ.get("MAILSHARD_CYRUS_ROOT"):
        return Path(os.environ["MAILSHARD_CYRUS_ROOT"])
    if os.geteuid() == 0:
        return Path("/var/cache/mailshard/cyrus-root")
    return Path.home() / ".cache/mailshard/cyrus-root"


def require_cyrus_pop3d() -> None:
    """Skip unless the Cyrus prefix has ``pop3d`` (package cyrus-pop3d; without it a member serves no POP3)."""
    if not (cyrus_root() / "usr/lib/cyrus/bin/pop3d").exists():
        pytest.skip(f"the Cyrus prefix {cyrus_root()} has no pop3d (package cyrus-pop3d)")


@pytest.fixture(scope="session")
def cyrus_preload_library() -> Iterator[Path]:
    """The library the agent preloads into Cyrus (logs, unique ids), built as the Cyrus image builds it."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the Cyrus preload library (apt-get install gcc libc6-dev)")
    directory = Path(tempfile.mkdtemp(prefix="ms-preload-"))
    directory.chmod(0o755)  # the daemons run as vmail
    library = directory / cyruspreload.DEFAULT_PRELOAD.name
    subprocess.run(cyruspreload.compile_command(library), check=True, capture_output=True)
    yield library
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def make_cyrus_pair(
    make_pair: PairFactory, monkeypatch: pytest.MonkeyPatch, cyrus_preload_library: Path
) -> PairFactory:
    """``make_pair``, with both members switched to Cyrus; skips when the Cyrus prefix is missing."""
    root = cyrus_root()
    if not (root / ".complete").exists():
        pytest.skip(f"no Cyrus prefix at {root} (run .ci/install-cyrus-prefix)")
    monkeypatch.setenv("MAILSHARD_CYRUS_ROOT", str(root))  # read by the agents started below
    monkeypatch.setenv(cyruspreload.ENV_PRELOAD, str(cyrus_preload_library))

    def factory(**kwargs: Any) -> Pair:
        pair = make_pair(**kwargs)
        for member in (pair.a, pair.b):
            member.config["backend"] = "cyrus"
            member.write_config()
        return pair

    return factory
